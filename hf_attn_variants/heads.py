r"""Head math: pure tensor functions that change the number of K/V heads.

Nothing here imports transformers. Every function takes a projection's K or V rows viewed as
``(kv_heads * head_dim, *rest)`` (a ``nn.Linear`` weight, a bias, or the K block of a fused projection
after it has been split off) and returns the rows for another number of K/V heads.

How query heads share K/V heads (H query heads, G K/V heads, H/G query heads per group)::

    MHA (G = H)        GQA (1 < G < H)          MQA (G = 1)
    q0 q1 q2 q3        q0 q1   q2 q3            q0 q1 q2 q3
    |  |  |  |          \ /     \ /               \ \ / /
    k0 k1 k2 k3          k0      k1                  k0

Query head ``i`` uses K/V head ``i // (H / G)``: the order of transformers' ``repeat_kv``. Regrouping
from G_src to G_dst K/V heads therefore makes K/V head ``j`` of the result from the source heads that
the query heads of group ``j`` used. When every query head of a group used the same source head (the case
whenever G_dst is a multiple of G_src: expansion, identity) the result is an exact copy of that head;
otherwise the ``kv_init`` method decides how they are combined.
"""

from __future__ import annotations

import torch

from .choices import KV_INIT_METHODS


def kv_head_for_query_heads(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Index of the K/V head that each of the ``num_heads`` query heads attends with."""
    check_head_counts(num_heads, num_kv_heads)
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def check_head_counts(num_heads: int, num_kv_heads: int) -> None:
    """Raise ``ValueError`` unless ``num_kv_heads`` is a positive divisor of ``num_heads``."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        valid = [g for g in range(1, num_heads + 1) if num_heads % g == 0] if num_heads > 0 else []
        raise ValueError(
            f"num_key_value_heads={num_kv_heads} must divide num_attention_heads={num_heads}; valid choices: {valid}"
        )


def source_heads_per_group(num_heads: int, src_kv_heads: int, dst_kv_heads: int) -> torch.Tensor:
    """``(dst_kv_heads, num_heads // dst_kv_heads)``: the source K/V head used by each query head of each group."""
    src_of_query = kv_head_for_query_heads(num_heads, src_kv_heads)
    check_head_counts(num_heads, dst_kv_heads)
    return src_of_query.view(dst_kv_heads, num_heads // dst_kv_heads)


def regroup_kv_heads(
    rows: torch.Tensor,
    num_heads: int,
    src_kv_heads: int,
    dst_kv_heads: int,
    method: str = "mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn the rows of ``src_kv_heads`` K/V heads into the rows of ``dst_kv_heads`` heads.

    ``rows`` is ``(src_kv_heads * head_dim, *rest)``. Groups whose query heads all used one source head
    get an exact copy of it (expansion, identity). Other groups are combined by ``method``: ``mean``
    averages the source heads weighted by how many query heads of the group used each (the GQA paper's
    mean pooling; exact when those heads are equal), ``first`` keeps the head of the group's first query
    head, ``random`` draws new rows with the source rows' standard deviation from ``generator``.
    """
    if method not in KV_INIT_METHODS:
        raise ValueError(f"kv_init={method!r} is not one of {list(KV_INIT_METHODS)}")
    if rows.shape[0] % src_kv_heads:
        raise ValueError(
            f"cannot split {rows.shape[0]} rows into {src_kv_heads} K/V heads: the rows are not a multiple of "
            "the head count (is head_dim right?)"
        )
    head_dim = rows.shape[0] // src_kv_heads
    rest = rows.shape[1:]
    groups = source_heads_per_group(num_heads, src_kv_heads, dst_kv_heads)  # (dst_kv, H/dst_kv)
    heads = rows.reshape(src_kv_heads, head_dim, *rest)  # (src_kv, head_dim, *rest)

    exact = bool((groups == groups[:, :1]).all())  # every group reads one source head: copy it
    if not exact and method in ("aligned", "svd"):
        raise ValueError(
            f"kv_init={method!r} merges whole attention layers (queries, keys, values and outputs together), not "
            "one tensor: use hf_attn_variants.convert on a model in memory"
        )
    if exact or method == "first":
        return heads[groups[:, 0]].reshape(dst_kv_heads * head_dim, *rest)
    if method == "random":
        std = rows.float().std() if rows.numel() > 1 else torch.tensor(0.0)
        fresh = torch.randn((dst_kv_heads * head_dim, *rest), generator=generator, dtype=torch.float32)
        return (fresh * std).to(dtype=rows.dtype, device=rows.device)
    # mean: anchor + mean of the differences to the anchor, so that equal heads give back the same bits
    if torch.equal(groups.flatten(), torch.arange(src_kv_heads)):  # each source head in one group, in order
        members = heads.reshape(dst_kv_heads, -1, head_dim, *rest)  # a view: no copy of the rows
    else:
        members = heads[groups]  # (dst_kv, H/dst_kv, head_dim, *rest)
    anchor = members[:, :1]
    accumulate = torch.promote_types(rows.dtype, torch.float32)  # half precisions average in float32
    pooled = anchor + (members - anchor).to(accumulate).mean(dim=1, keepdim=True).to(rows.dtype)
    return pooled.reshape(dst_kv_heads * head_dim, *rest)


def split_fused(rows: torch.Tensor, sizes: list[int], dim: int = 0) -> list[torch.Tensor]:
    """Split a fused ``[q | k | v]`` projection into its blocks along ``dim``."""
    if rows.shape[dim] != sum(sizes):
        raise ValueError(
            f"fused projection has {rows.shape[dim]} rows along dim {dim}, expected {sum(sizes)} = "
            f"{' + '.join(map(str, sizes))}"
        )
    return list(torch.split(rows, sizes, dim=dim))


def split_grouped_qkv(rows: torch.Tensor, num_heads: int, num_kv_heads: int) -> list[torch.Tensor]:
    """Split a fused projection interleaved per K/V group into its q, k and v blocks.

    ``rows`` is ``((num_heads + 2 * num_kv_heads) * head_dim, *rest)``, laid out as G groups, each the
    H/G query heads of the group, then its key head, then its value head::

        [q_0 .. q_(H/G-1) k_0 v_0 | q_(H/G) .. q_(2H/G-1) k_1 v_1 | ...]

    With G = H that is GPT-NeoX's (and BLOOM's, GPTBigCode's and old Falcon's MHA) per-head ``[q_h k_h v_h] x H``;
    with G = 1 it is the ``[q | k | v]`` blocks of GPTBigCode's and Falcon's MQA. Returns q
    ``(H * head_dim, *rest)`` and k, v ``(G * head_dim, *rest)``, each in head order.
    """
    check_head_counts(num_heads, num_kv_heads)
    width = num_heads + 2 * num_kv_heads  # heads' worth of rows
    if rows.shape[0] % width:
        raise ValueError(
            f"fused projection has {rows.shape[0]} rows, not a multiple of num_heads + 2 * num_kv_heads = "
            f"{num_heads} + 2 * {num_kv_heads} = {width}"
        )
    head_dim, rest, per_group = rows.shape[0] // width, rows.shape[1:], num_heads // num_kv_heads
    groups = rows.reshape(num_kv_heads, per_group + 2, head_dim, *rest)  # (kv_heads, H/G + 2, head_dim, *rest)
    q = groups[:, :per_group].reshape(num_heads * head_dim, *rest)
    k = groups[:, per_group].reshape(num_kv_heads * head_dim, *rest)
    v = groups[:, per_group + 1].reshape(num_kv_heads * head_dim, *rest)
    return [q, k, v]


def merge_grouped_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of :func:`split_grouped_qkv`: q, k and v blocks interleaved per K/V group."""
    if q.shape[0] % num_heads or k.shape != v.shape:
        raise ValueError(f"q of {q.shape[0]} rows for {num_heads} heads, k {tuple(k.shape)}, v {tuple(v.shape)}")
    head_dim, rest = q.shape[0] // num_heads, q.shape[1:]
    if k.shape[0] % head_dim:
        raise ValueError(f"k has {k.shape[0]} rows, not a multiple of head_dim {head_dim}")
    num_kv_heads = k.shape[0] // head_dim
    check_head_counts(num_heads, num_kv_heads)
    q = q.reshape(num_kv_heads, num_heads // num_kv_heads, head_dim, *rest)  # (kv_heads, H/G, head_dim, *rest)
    k = k.reshape(num_kv_heads, 1, head_dim, *rest)  # (kv_heads, 1, head_dim, *rest)
    v = v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)  # ((H + 2G) * head_dim, *rest)


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_element: int) -> int:
    """Bytes one token adds to a KV cache: keys and values, every layer, every K/V head."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_element
