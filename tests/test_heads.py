"""The head math on hand-labelled integer tensors: every row says which head and which dim it is."""

import pytest
import torch

from hf_attn_variants.heads import (
    kv_cache_bytes_per_token,
    kv_head_for_query_heads,
    merge_grouped_qkv,
    regroup_kv_heads,
    source_heads_per_group,
    split_fused,
    split_grouped_qkv,
)


def labelled(kv_heads: int, head_dim: int = 2, cols: int = 3) -> torch.Tensor:
    """Row r of head h holds 100*h + 10*r + c in column c."""
    h = torch.arange(kv_heads).view(-1, 1, 1) * 100
    r = torch.arange(head_dim).view(1, -1, 1) * 10
    c = torch.arange(cols).view(1, 1, -1)
    return (h + r + c).reshape(kv_heads * head_dim, cols)


def test_query_heads_use_kv_heads_in_repeat_kv_order():
    assert kv_head_for_query_heads(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert kv_head_for_query_heads(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert kv_head_for_query_heads(4, 4).tolist() == [0, 1, 2, 3]


def test_expansion_duplicates_each_head_for_its_query_heads():
    out = regroup_kv_heads(labelled(2), num_heads=4, src_kv_heads=2, dst_kv_heads=4)
    assert torch.equal(out, torch.cat([labelled(2)[:2], labelled(2)[:2], labelled(2)[2:], labelled(2)[2:]]))


def test_same_count_is_identity():
    rows = labelled(4)
    assert torch.equal(regroup_kv_heads(rows, 8, 4, 4, "random"), rows)


def test_mean_pools_contiguous_groups():
    rows = labelled(4).float()
    out = regroup_kv_heads(rows, num_heads=4, src_kv_heads=4, dst_kv_heads=2)
    # group 0 = heads 0, 1 -> mean label 50; group 1 = heads 2, 3 -> 250
    expected = torch.tensor([[50.0, 51, 52], [60, 61, 62], [250, 251, 252], [260, 261, 262]])
    assert torch.equal(out, expected)


def test_mean_weights_source_heads_by_the_query_heads_that_used_them():
    # 6 query heads on 3 K/V heads -> 2 K/V heads: group 0 = query 0,1,2 -> sources 0,0,1
    rows = labelled(3, head_dim=1, cols=1).float()  # heads labelled 0, 100, 200
    assert source_heads_per_group(6, 3, 2).tolist() == [[0, 0, 1], [1, 2, 2]]
    out = regroup_kv_heads(rows, num_heads=6, src_kv_heads=3, dst_kv_heads=2)
    assert torch.allclose(out.flatten(), torch.tensor([100 / 3, 500 / 3]))


def test_first_keeps_the_head_of_each_groups_first_query_head():
    out = regroup_kv_heads(labelled(4), num_heads=8, src_kv_heads=4, dst_kv_heads=1, method="first")
    assert torch.equal(out, labelled(4)[:2])


def test_mean_of_equal_heads_is_bitwise_exact():
    head = torch.randn(4, 5, dtype=torch.float32)
    rows = torch.cat([head, head, head])  # 3 equal heads of dim 4
    assert torch.equal(regroup_kv_heads(rows, num_heads=3, src_kv_heads=3, dst_kv_heads=1), head)


def test_random_is_seeded_and_scaled():
    rows = torch.randn(8, 16) * 3
    a = regroup_kv_heads(rows, 4, 4, 1, "random", torch.Generator().manual_seed(0))
    b = regroup_kv_heads(rows, 4, 4, 1, "random", torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 16)
    assert 1.5 < a.std() < 6


def test_biases_are_regrouped_like_weight_rows():
    bias = labelled(4, head_dim=2, cols=1).flatten().float()
    assert regroup_kv_heads(bias, 4, 4, 2).tolist() == [50.0, 60.0, 250.0, 260.0]


def test_dtype_is_preserved():
    rows = torch.randn(8, 4, dtype=torch.bfloat16)
    assert regroup_kv_heads(rows, 4, 4, 2).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "args, message",
    [
        (
            (labelled(4), 8, 4, 3),
            "num_key_value_heads=3 must divide num_attention_heads=8; valid choices: [1, 2, 4, 8]",
        ),
        ((labelled(3), 8, 3, 1), "num_key_value_heads=3 must divide"),
        ((labelled(4)[:7], 8, 4, 2), "cannot split 7 rows into 4 K/V heads"),
        (
            (labelled(4), 8, 4, 2, "median"),
            "kv_init='median' is not one of ['mean', 'first', 'random', 'aligned', 'svd']",
        ),
    ],
)
def test_bad_head_counts_raise_with_the_valid_choices(args, message):
    with pytest.raises(ValueError) as err:
        regroup_kv_heads(*args)
    assert message in str(err.value)


def test_split_fused_blocks():
    q, k, v = split_fused(torch.arange(10), [6, 2, 2])
    assert q.tolist() == list(range(6)) and k.tolist() == [6, 7] and v.tolist() == [8, 9]
    with pytest.raises(ValueError, match=r"^fused projection has 10 rows along dim 0, expected 11 = 6 \+ 3 \+ 2$"):
        split_fused(torch.arange(10), [6, 3, 2])


def interleaved(labels: list[str], head_dim: int = 2) -> tuple[torch.Tensor, dict[str, int]]:
    """Rows of a fused projection laid out as ``labels`` (one head each), row r of head "k1" labelled
    code("k1") * 10 + r; returns the rows and the codes."""
    codes = {name: i + 1 for i, name in enumerate(sorted(set(labels)))}
    return torch.tensor([codes[name] * 10 + r for name in labels for r in range(head_dim)]), codes


def heads_of(rows: torch.Tensor, codes: dict[str, int], head_dim: int = 2) -> list[str]:
    names = {code: name for name, code in codes.items()}
    heads = rows.view(-1, head_dim)
    assert torch.equal(heads % 10, torch.arange(head_dim).expand_as(heads)), "rows of a head were reordered"
    return [names[int(h[0]) // 10] for h in heads]


def test_split_per_head_interleaved_qkv_like_gpt_neox():
    rows, codes = interleaved(["q0", "k0", "v0", "q1", "k1", "v1", "q2", "k2", "v2", "q3", "k3", "v3"])
    q, k, v = split_grouped_qkv(rows, num_heads=4, num_kv_heads=4)
    assert heads_of(q, codes) == ["q0", "q1", "q2", "q3"]
    assert heads_of(k, codes) == ["k0", "k1", "k2", "k3"]
    assert heads_of(v, codes) == ["v0", "v1", "v2", "v3"]
    assert torch.equal(merge_grouped_qkv(q, k, v, num_heads=4), rows)


def test_split_and_merge_per_kv_group_interleaved_qkv():
    rows, codes = interleaved(["q0", "q1", "k0", "v0", "q2", "q3", "k1", "v1"])  # 4 query heads, 2 K/V heads
    q, k, v = split_grouped_qkv(rows, num_heads=4, num_kv_heads=2)
    assert heads_of(q, codes) == ["q0", "q1", "q2", "q3"]
    assert heads_of(k, codes) == ["k0", "k1"] and heads_of(v, codes) == ["v0", "v1"]
    assert torch.equal(merge_grouped_qkv(q, k, v, num_heads=4), rows)
    mqa = merge_grouped_qkv(q, k[:2], v[:2], num_heads=4)  # one K/V head: all queries, then k0, v0
    assert heads_of(mqa, codes) == ["q0", "q1", "q2", "q3", "k0", "v0"]


def test_one_kv_group_is_the_blocks_layout_of_gpt_bigcode_and_falcon_mqa():
    rows, codes = interleaved(["q0", "q1", "q2", "q3", "k0", "v0"])  # c_attn / query_key_value with multi_query
    q, k, v = split_grouped_qkv(rows, num_heads=4, num_kv_heads=1)
    assert heads_of(q, codes) == ["q0", "q1", "q2", "q3"] and heads_of(k, codes) == ["k0"]
    assert heads_of(v, codes) == ["v0"]
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), split_fused(rows, [8, 2, 2]), strict=True))
    assert torch.equal(merge_grouped_qkv(q, k, v, num_heads=4), rows)


def test_grouped_qkv_keeps_columns_and_checks_row_counts():
    weight = torch.arange(12 * 2 * 3).view(12 * 2, 3)  # 4 heads, head_dim 2, 3 inputs, per-head interleaved
    q, k, v = split_grouped_qkv(weight, 4, 4)
    assert q.shape == k.shape == v.shape == (8, 3)
    assert torch.equal(k[:2], weight[2:4]) and torch.equal(v[2:4], weight[10:12])
    with pytest.raises(
        ValueError,
        match=r"^fused projection has 23 rows, not a multiple of num_heads \+ 2 \* num_kv_heads = 4 \+ 2 \* 4 = 12$",
    ):
        split_grouped_qkv(weight[:23], 4, 4)
    with pytest.raises(
        ValueError, match=r"^num_key_value_heads=3 must divide num_attention_heads=4; valid choices: \[1, 2, 4\]$"
    ):
        split_grouped_qkv(weight, 4, 3)


def test_kv_cache_bytes_formula():
    # the reference shape of BENCHMARKS.md: 4 layers, head_dim 64, fp32 -> 32 / 8 / 2 KiB per token
    assert [kv_cache_bytes_per_token(4, g, 64, 4) for g in (16, 4, 1)] == [32768, 8192, 2048]
