r"""Merging K/V heads better than by averaging them: pure tensor math on one layer, no transformers.

A layer is held in MHA form (one K/V head per query head; a GQA source is expanded first, which is exact)
as :class:`LayerHeads`: every projection is ``(heads, head_dim, inputs + 1)``, the last input column being
the bias, so that the second moment ``S = E[x x^T]`` of the attention input ``x = [hidden; 1]`` on
calibration text gives every expectation the methods need (``E[k_h k_g^T] = W_h S W_g^T``). Without
calibration, ``S`` is the identity: the methods then see the weights alone.

Merging makes, for each group of query heads, one shared key and one shared value as linear functions of
the input, and changes only what the model can absorb: each query head's projection (keys) and each head's
columns of the output projection (values). What each method does, per group:

``mean``
    average the heads (the GQA paper).
``aligned``
    first transform each head so that the model's function does not change: a RoPE frequency pair of the
    keys is a complex number that RoPE multiplies by a phase, so each head's pair is rotated by its own
    phase (and its query pair with it); dims without RoPE and the values get an orthogonal map (absorbed
    into the query and the output projection). The phases and maps line the heads up with each other;
    then the heads are averaged, keys weighted by their query's energy per frequency pair, values by the
    energy of their output projection.
``svd``
    the best low-rank merge: per RoPE frequency pair, the shared key is the best rank-1 complex
    approximation of the group's query-energy-weighted key features; without RoPE (and for values), the
    shared head spans the top principal subspace of the group's features weighted by what reads them (the
    query's covariance for keys, the output projection for values). Each head then absorbs its
    least-squares map onto the shared head.

``fit`` (implied by ``svd``) re-fits, after merging, each query head (per pair: a complex coefficient; without
RoPE: a ``head_dim`` square map) and each head's output-projection columns by least squares onto the
shared key and value.

``hf_attn_variants.calibrated`` runs these on whole models: it collects ``S`` and reads and writes each layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

MERGE_METHODS = ("mean", "aligned", "svd")


@dataclass(frozen=True)
class HeadLayout:
    """Which dims of a head RoPE rotates together.

    Attributes:
        pairs: ``(P, 2)`` dims ``(real, imaginary)`` rotated by one frequency.
        free: the dims without rotary positions.
    """

    pairs: torch.Tensor
    free: torch.Tensor

    @classmethod
    def rotary(cls, head_dim: int, rotary_dims: int = 0, style: str | None = "half") -> HeadLayout:
        """The layout of ``rotate_half`` (``style="half"``) or ``rotate_every_two`` (``"interleaved"``) RoPE.

        The first ``rotary_dims`` dims rotate; ``rotary_dims=0`` or ``style=None`` means no RoPE.
        """
        if style is None or rotary_dims == 0:
            return cls(torch.zeros(0, 2, dtype=torch.long), torch.arange(head_dim))
        if rotary_dims % 2 or not 0 < rotary_dims <= head_dim:
            raise ValueError(f"rotary_dims={rotary_dims} must be even and at most head_dim={head_dim}")
        half = rotary_dims // 2
        if style == "half":
            pairs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1)
        elif style == "interleaved":
            pairs = torch.stack([torch.arange(0, rotary_dims, 2), torch.arange(1, rotary_dims, 2)], dim=1)
        else:
            raise ValueError(f"rotary style {style!r} is not one of ['half', 'interleaved', None]")
        return cls(pairs, torch.arange(rotary_dims, head_dim))


@dataclass(frozen=True)
class LayerHeads:
    """One attention layer in MHA form; the last input column of q, k and v is the bias.

    Attributes:
        q, k, v: ``(heads, head_dim, inputs + 1)``.
        o: ``(heads, hidden, head_dim)``, the output projection's columns of each head.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor

    def permute(self, order: torch.Tensor) -> LayerHeads:
        """The same layer with its heads in ``order`` (an exact re-parametrisation)."""
        return LayerHeads(self.q[order], self.k[order], self.v[order], self.o[order])


def _top_eigh(matrix: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` eigenvectors of the largest eigenvalues of Hermitian ``matrix`` (as columns, largest first)."""
    _, vectors = torch.linalg.eigh(matrix)
    return vectors[..., :, -count:].flip(-1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt().unsqueeze(-2)) @ vectors.mT


def _least_squares_maps(feats: torch.Tensor, shared: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``(n, m, m)``: for each head the map ``M_h`` minimising ``E||feats_h x - M_h shared x||^2``."""
    cross = feats @ s @ shared.mT  # (n, m, m): E[f_h z^T]
    gram = shared @ s @ shared.mT  # (m, m): E[z z^T]
    return cross @ torch.linalg.pinv(gram, hermitian=True, rtol=1e-8)


def _procrustes(cross: torch.Tensor) -> torch.Tensor:
    """The orthogonal ``R`` maximising ``trace(R^T cross)`` (batched)."""
    u, _, vh = torch.linalg.svd(cross)
    return u @ vh


def _scale_like(shared: torch.Tensor, feats: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``shared`` rescaled to the mean energy of the heads it replaces (keeps the weights' usual size)."""
    energy = torch.einsum("mi,ij,mj->", shared, s, shared)
    target = torch.einsum("hmi,ij,hmj->", feats, s, feats) / feats.shape[0]
    return shared * (target / energy).sqrt() if energy > 0 else shared


def merge_free(
    feats: torch.Tensor, readers: torch.Tensor, s: torch.Tensor, method: str, fit: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge the features of ``n`` heads with no RoPE (values, or keys without rotary dims) into one.

    Args:
        feats: ``(n, m, inputs + 1)`` each head's rows.
        readers: ``(n, m, m)`` the second moment of what reads each head's features (the query's
            covariance for keys, ``o_h^T o_h`` for values): errors are weighted by it.
        s: ``(inputs + 1, inputs + 1)`` the input's second moment.

    Returns:
        ``(shared, align, maps)``: the shared rows ``(m, inputs + 1)``; each head's orthogonal alignment
        ``(n, m, m)`` (identity unless ``aligned``), applied before merging; each head's least-squares map
        ``(n, m, m)`` from the shared head to its aligned features, or ``None`` without ``fit``.
    """
    n, m, _ = feats.shape
    align = torch.eye(m, dtype=feats.dtype).expand(n, m, m).clone()
    if m == 0:
        return feats[0], align, (align if fit or method == "svd" else None)
    if method == "mean":
        shared = feats.mean(0)
    elif method == "aligned":
        weights = readers.diagonal(dim1=-2, dim2=-1).sum(-1)  # (n,) energy of each head's reader
        weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / n)
        reference = feats[int(weights.argmax())]
        for _ in range(8):  # generalised Procrustes: align to the weighted mean, repeat
            align = _procrustes(reference @ s @ feats.mT)  # (n, m, m): maximise E[ref^T R f_h]
            aligned = align @ feats
            reference = torch.einsum("h,hmi->mi", weights, aligned)
        shared = reference
    elif method == "svd":
        weighted = (_sqrt_psd(readers) @ feats).reshape(n * m, -1)  # (n m, inputs + 1)
        basis = _top_eigh(weighted @ s @ weighted.mT, m)  # (n m, m): top principal subspace
        shared = _scale_like(basis.mT @ weighted, feats, s)
    else:
        raise ValueError(f"merge method {method!r} is not one of {list(MERGE_METHODS)}")
    maps = _least_squares_maps(align @ feats, shared, s) if fit or method == "svd" else None
    return shared, align, maps


def merge_rotary(
    keys: torch.Tensor, query_energy: torch.Tensor, s: torch.Tensor, method: str, fit: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge ``n`` heads' RoPE frequency pairs, each a complex feature, into one per pair.

    Args:
        keys: ``(n, P, inputs + 1)`` complex: row ``real + i * imaginary`` of each pair of each head.
        query_energy: ``(n, P)`` ``E|q_hp|^2`` of the query pair that reads each key pair.
        s: the input's second moment.

    Returns:
        ``(shared, phase, coef)``: the shared pairs ``(P, inputs + 1)`` complex; the unit phase ``(n, P)``
        each head's pair is turned by before merging (1 unless ``aligned``); the least-squares complex
        coefficient ``(n, P)`` with ``phase * key ~ coef * shared``, or ``None`` without ``fit``.
    """
    n, pairs, _ = keys.shape
    phase = torch.ones(n, pairs, dtype=keys.dtype)
    if pairs == 0:
        return keys[0], phase, (phase if fit or method == "svd" else None)
    sc = s.to(keys.dtype)
    gram = torch.einsum("hpi,ij,gpj->phg", keys, sc, keys.conj())  # (P, n, n): E[k_h conj(k_g)]
    root = query_energy.clamp(min=0).sqrt().T  # (P, n)
    weighted = root.unsqueeze(-1) * gram.conj() * root.unsqueeze(-2)  # (P, n, n) Gram of sqrt(w_h) k_h
    top = _top_eigh(weighted, 1)[..., 0]  # (P, n): the rank-1 direction
    if method == "mean":
        shared = keys.mean(0)
    elif method == "aligned":
        phase = torch.where(top.abs() > 1e-12, top / top.abs().clamp(min=1e-30), torch.ones_like(top)).T  # (n, P)
        total = query_energy.sum(0, keepdim=True)  # (1, P)
        weights = torch.where(total > 0, query_energy / total.clamp(min=1e-30), torch.full_like(query_energy, 1 / n))
        shared = torch.einsum("hp,hpi->pi", (weights * phase).to(keys.dtype), keys)
    elif method == "svd":
        coefficients = (root * top).T  # (n, P): shared = sum_h sqrt(w_h) v_h k_h
        shared = torch.einsum("hp,hpi->pi", coefficients, keys)
        energy = torch.einsum("pi,ij,pj->p", shared, sc, shared.conj()).real
        target = torch.einsum("hpi,ij,hpj->p", keys, sc, keys.conj()).real / n
        shared = shared * torch.where(energy > 0, (target / energy.clamp(min=1e-300)).sqrt(), 1.0).unsqueeze(-1)
    else:
        raise ValueError(f"merge method {method!r} is not one of {list(MERGE_METHODS)}")
    if not (fit or method == "svd"):
        return shared, phase, None
    turned = phase.unsqueeze(-1) * keys
    cross = torch.einsum("hpi,ij,pj->hp", turned, sc, shared.conj())  # (n, P): E[k_h conj(z)]
    energy = torch.einsum("pi,ij,pj->p", shared, sc, shared.conj()).real  # (P,)
    heads_energy = torch.einsum("hpi,ij,hpj->p", keys, sc, keys.conj()).real / n
    usable = energy > 1e-12 * heads_energy  # a shared pair that cancelled out carries no key: no coefficient
    coef = torch.where(usable, cross / energy.clamp(min=1e-300), torch.zeros_like(cross))
    if method == "svd":  # turn the shared pair so that the heads' coefficients add up to a positive real
        turn = coef.sum(0)
        turn = torch.where(turn.abs() > 0, turn / turn.abs().clamp(min=1e-300), torch.ones_like(turn))
        shared, coef = shared * turn.unsqueeze(-1), coef * turn.conj()
    return shared, phase, coef


def _complex_rows(rows: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """``(n, P, inputs + 1)`` complex pairs of ``rows`` ``(n, head_dim, inputs + 1)``."""
    return torch.complex(rows[:, layout.pairs[:, 0]], rows[:, layout.pairs[:, 1]])


def _write_pairs(rows: torch.Tensor, layout: HeadLayout, pairs: torch.Tensor) -> None:
    rows[:, layout.pairs[:, 0]] = pairs.real
    rows[:, layout.pairs[:, 1]] = pairs.imag


def merge_group(
    heads: LayerHeads,
    s: torch.Tensor,
    layout: HeadLayout,
    method: str = "svd",
    fit: bool = False,
    keys: bool = True,
    merge: bool = True,
    values: bool = True,
) -> LayerHeads:
    """One group of query heads with one shared key and value (repeated per head, so the result stays in MHA form).

    ``keys=False`` keeps the query projections as they are and averages the keys (families that normalise
    their keys after projecting them: a map on the key would not pass through the norm); ``values=False``
    keeps the output projection and averages the values (families that gate each head's output per dim before
    the output projection). ``merge=False``
    (``aligned`` only) returns the heads after the function-preserving alignment, before averaging them.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method {method!r} is not one of {list(MERGE_METHODS)}")
    if not merge and (fit or method != "aligned"):
        raise ValueError("merge=False shows the alignment alone: use method='aligned' without fit")
    n = heads.q.shape[0]
    q, k = heads.q.clone(), heads.k.clone()
    if not keys:
        if merge:
            k[:] = heads.k.mean(0)
    else:
        qc, kc = _complex_rows(heads.q, layout), _complex_rows(heads.k, layout)
        energy = torch.einsum("hpi,ij,hpj->hp", qc, s.to(qc.dtype), qc.conj()).real
        shared, phase, coef = merge_rotary(kc, energy, s, method, fit)
        qc = qc * phase.unsqueeze(-1)  # the phase that turns the key turns its query: Re(q conj k) is unchanged
        if coef is not None:
            qc = qc * coef.conj().unsqueeze(-1)  # q conj(k) ~ q conj(c z) = (q conj(c)) conj(z)
        _write_pairs(q, layout, qc)
        _write_pairs(k, layout, shared.expand(n, *shared.shape) if merge else phase.unsqueeze(-1) * kc)
        free = layout.free
        qf, kf = heads.q[:, free], heads.k[:, free]  # (n, m, inputs + 1)
        shared, align, maps = merge_free(kf, qf @ s @ qf.mT, s, method, fit)
        qf = align @ qf  # the same orthogonal map on query and key keeps q . k
        if maps is not None:
            qf = maps.mT @ qf  # q . (M z) = (M^T q) . z
        q[:, free], k[:, free] = qf, (shared if merge else align @ kf)
    o_cols = heads.o  # (n, hidden, head_dim)
    if not values:
        v = heads.v.mean(0).expand_as(heads.v).clone() if merge else heads.v.clone()
        return LayerHeads(q, k, v, o_cols)
    shared, align, maps = merge_free(heads.v, o_cols.mT @ o_cols, s, method, fit)
    o_cols = o_cols @ align.mT  # v' = R v, o' = o R^T
    if maps is not None:
        o_cols = o_cols @ maps
    v = shared.expand_as(heads.v).clone() if merge else align @ heads.v
    return LayerHeads(q, k, v, o_cols)


def merge_layer(
    heads: LayerHeads,
    s: torch.Tensor,
    layout: HeadLayout,
    num_groups: int,
    method: str = "svd",
    fit: bool = False,
    keys: bool = True,
    merge: bool = True,
    values: bool = True,
) -> LayerHeads:
    """Every contiguous group of ``heads.q.shape[0] // num_groups`` heads merged by :func:`merge_group`."""
    n = heads.q.shape[0] // num_groups
    merged = [
        merge_group(_select(heads, slice(g * n, (g + 1) * n)), s, layout, method, fit, keys, merge, values)
        for g in range(num_groups)
    ]
    return LayerHeads(*(torch.cat([getattr(m, f) for m in merged]) for f in ("q", "k", "v", "o")))


def _select(heads: LayerHeads, index) -> LayerHeads:
    return replace(heads, q=heads.q[index], k=heads.k[index], v=heads.v[index], o=heads.o[index])


def merge_costs(heads: LayerHeads, s: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """``(H, H)``: how much of two heads' keys and values a shared head loses (the ``svd`` residual).

    The key residual (weighted by the queries) and the value residual (weighted by the output projection)
    are each a fraction of the pair's energy of that kind, from 0 (identical heads) to 1/2; the cost is
    their sum. The diagonal is 0.
    """
    count = heads.q.shape[0]
    costs = torch.zeros(count, count, dtype=heads.q.dtype)
    qc, kc = _complex_rows(heads.q, layout), _complex_rows(heads.k, layout)
    qw = torch.einsum("hpi,ij,hpj->hp", qc, s.to(qc.dtype), qc.conj()).real.clamp(min=0)  # (H, P)
    gram = torch.einsum("hpi,ij,gpj->phg", kc, s.to(kc.dtype), kc.conj())  # (P, H, H)
    key_gram = qw.sqrt().T.unsqueeze(-1) * gram * qw.sqrt().T.unsqueeze(-2)  # weighted
    free = layout.free
    key_feats = _sqrt_psd(heads.q[:, free] @ s @ heads.q[:, free].mT) @ heads.k[:, free]  # (H, m, inputs+1)
    value_feats = _sqrt_psd(heads.o.mT @ heads.o) @ heads.v  # (H, d, inputs + 1)
    for h in range(count):
        for g in range(h + 1, count):
            pair = key_gram[:, [h, g]][:, :, [h, g]]  # (P, 2, 2)
            key_energy = pair.diagonal(dim1=-2, dim2=-1).real.sum()
            key_lost = torch.linalg.eigvalsh(pair)[:, 0].clamp(min=0).sum()
            parts = []
            for feats, energy, lost in ((key_feats, key_energy, key_lost), (value_feats, 0.0, 0.0)):
                if feats.shape[1]:
                    stacked = feats[[h, g]].reshape(-1, feats.shape[-1])
                    values = torch.linalg.eigvalsh(stacked @ s @ stacked.mT).clamp(min=0)  # ascending
                    energy, lost = energy + values.sum(), lost + values[: feats.shape[1]].sum()
                parts.append(float(lost / energy) if energy > 0 else 0.0)
            costs[h, g] = costs[g, h] = sum(parts)  # keys and values each count as a fraction of their energy
    return costs


def similarity_groups(costs: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``(num_groups, H / num_groups)`` heads that share a K/V head: equal groups with a small summed pair cost.

    Starts from contiguous groups and swaps heads between groups while a swap lowers the total cost, so the
    result is deterministic and never worse than contiguous grouping. Each group is sorted, groups by
    their first head.
    """
    count = costs.shape[0]
    if count % num_groups:
        raise ValueError(f"{count} heads cannot make {num_groups} equal groups")
    size = count // num_groups
    group_of = torch.arange(count) // size
    for _ in range(100 * count):
        member = torch.nn.functional.one_hot(group_of, num_groups).to(costs.dtype)  # (H, G)
        to_group = costs @ member  # (H, G): cost of each head to each group's members
        own = to_group.gather(1, group_of[:, None])[:, 0]
        # swapping h (group a) and g (group b) changes the total by the gain below (counted once per pair)
        a, b = group_of[:, None], group_of[None, :]
        change = (to_group.gather(1, b.expand(count, count)) - own[:, None] - 2 * costs) + (
            to_group.gather(1, a.expand(count, count).T).T - own[None, :]
        )
        change = torch.where(a == b, torch.zeros_like(change), change)
        best = int(change.argmin())
        if change.view(-1)[best] >= -1e-12:
            break
        h, g = divmod(best, count)
        group_of[h], group_of[g] = group_of[g].clone(), group_of[h].clone()
    groups = [torch.nonzero(group_of == j)[:, 0] for j in range(num_groups)]
    groups.sort(key=lambda members: int(members[0]))
    return torch.stack(groups)
