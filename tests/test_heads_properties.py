"""Property-based tests of the head math over random head counts, group counts, head dims and dtypes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_attn_variants.heads import regroup_kv_heads


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def layouts(draw):
    """(num_heads, src_kv, dst_kv, head_dim, rest): both K/V counts divide num_heads, one divides the other."""
    num_heads = draw(st.integers(1, 24))
    few = draw(st.sampled_from(divisors(num_heads)))
    many = draw(st.sampled_from([g for g in divisors(num_heads) if g % few == 0]))
    src, dst = (few, many) if draw(st.booleans()) else (many, few)
    head_dim = draw(st.integers(1, 6))
    rest = draw(st.sampled_from([(), (3,), (2, 2)]))
    return num_heads, src, dst, head_dim, rest


DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


def rows_for(kv_heads, head_dim, rest, dtype, seed):
    return torch.randn((kv_heads * head_dim, *rest), generator=torch.Generator().manual_seed(seed)).to(dtype)


@settings(max_examples=200, deadline=None)
@given(layouts(), DTYPES, st.integers(0, 2**16), st.sampled_from(["mean", "first", "random"]))
def test_shape_and_dtype_are_preserved(layout, dtype, seed, method):
    num_heads, src, dst, head_dim, rest = layout
    rows = rows_for(src, head_dim, rest, dtype, seed)
    out = regroup_kv_heads(rows, num_heads, src, dst, method, torch.Generator().manual_seed(seed))
    assert out.shape == (dst * head_dim, *rest) and out.dtype == dtype


@settings(max_examples=200, deadline=None)
@given(layouts(), DTYPES, st.integers(0, 2**16), st.sampled_from(["mean", "first"]))
def test_expansion_then_pooling_is_the_identity(layout, dtype, seed, method):
    num_heads, src, dst, head_dim, rest = layout
    few, many = min(src, dst), max(src, dst)
    rows = rows_for(few, head_dim, rest, dtype, seed)
    expanded = regroup_kv_heads(rows, num_heads, few, many, method)
    assert torch.equal(regroup_kv_heads(expanded, num_heads, many, few, method), rows)


@settings(max_examples=200, deadline=None)
@given(layouts(), DTYPES, st.integers(0, 2**16))
def test_pooling_equal_heads_is_exact(layout, dtype, seed):
    num_heads, src, dst, head_dim, rest = layout
    few, many = min(src, dst), max(src, dst)
    heads = rows_for(few, head_dim, rest, dtype, seed).view(few, head_dim, *rest)
    # every source head of a group equal to the group's head
    equal = heads.repeat_interleave(many // few, dim=0).reshape(many * head_dim, *rest)
    assert torch.equal(regroup_kv_heads(equal, num_heads, many, few, "mean"), heads.reshape(few * head_dim, *rest))


@settings(max_examples=100, deadline=None)
@given(layouts(), st.integers(0, 2**16), st.sampled_from(["mean", "first"]))
def test_biases_follow_their_weight_rows(layout, seed, method):
    """A bias regrouped alone equals the bias column of the weights regrouped with it."""
    num_heads, src, dst, head_dim, _ = layout
    weight = rows_for(src, head_dim, (4,), torch.float64, seed)
    bias = rows_for(src, head_dim, (), torch.float64, seed + 1)
    together = regroup_kv_heads(torch.cat([weight, bias[:, None]], dim=1), num_heads, src, dst, method)
    assert torch.equal(regroup_kv_heads(bias, num_heads, src, dst, method), together[:, -1])
    assert torch.equal(regroup_kv_heads(weight, num_heads, src, dst, method), together[:, :-1])
