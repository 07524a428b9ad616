"""The fast decode path (attn_implementation="hav_sdpa" + StaticCache): same tokens and logits as transformers'
sdpa, K/V heads read once, only the visible cache positions read."""

import re

import pytest
import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import hf_attn_variants as hav
from hf_attn_variants import decoding, timing
from hf_attn_variants.compat import cache_kwargs

from .conftest import FAMILIES, NO_SDPA, VOCAB, tiny_model

NOT_FAST = {"bloom", "falcon"}  # transformers' own attention of these does not dispatch through AttentionInterface
FAST = [f for f in FAMILIES if f not in NO_SDPA | NOT_FAST]


def not_fast_message(model_class: str) -> str:
    return (
        f"{model_class} cannot use attn_implementation='hav_sdpa': its attention does not dispatch through "
        "transformers' AttentionInterface (transformers' own Falcon and BLOOM; BLOOM's ALiBi is eager-only in the "
        "plugin too). Convert Falcon to a variant (hav.convert) to use it."
    )


class Heads(torch.nn.Module):
    """What transformers' sdpa reads from an attention module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.eval()


def _masks(batch: int, kv_len: int) -> dict:
    left_padded = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    left_padded[0, ..., :3] = False
    static = torch.ones(batch, 1, 1, kv_len, dtype=torch.bool)
    static[..., kv_len - 5 :] = False  # slots after the current token in a StaticCache
    both = left_padded & static
    return {"none": None, "all visible": torch.ones(batch, 1, 1, kv_len, dtype=torch.bool), "left padded": left_padded,
            "static slots": static, "padded + static": both}  # fmt: skip


@pytest.mark.parametrize("kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("mask", list(_masks(1, 1)))
def test_decode_step_equals_transformers_sdpa(kv_heads, mask):
    torch.manual_seed(0)
    batch, heads, kv_len, head_dim = 3, 8, 21, 16
    query = torch.randn(batch, heads, 1, head_dim)
    key, value = torch.randn(2, batch, kv_heads, kv_len, head_dim)
    attention_mask = _masks(batch, kv_len)[mask]
    module = Heads(heads // kv_heads)
    expected, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=0.3)
    got, weights = decoding.grouped_sdpa_attention(module, query, key, value, attention_mask, scaling=0.3)
    assert weights is None and got.shape == expected.shape == (batch, 1, heads, head_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_prefill_and_training_are_transformers_sdpa_unchanged():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    module = Heads(4)
    expected, _ = sdpa_attention_forward(module, query, key, value, None)
    got, _ = decoding.grouped_sdpa_attention(module, query, key, value, None)
    assert torch.equal(got, expected)


def test_visible_prefix_is_one_past_the_last_position_any_row_sees():
    mask = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    assert decoding.visible_prefix(mask) == 0
    mask[0, ..., 2:5] = True
    mask[1, ..., :7] = True
    assert decoding.visible_prefix(mask) == 7


def test_a_static_cache_is_read_up_to_the_current_token_only_and_the_mask_dropped():
    key = value = torch.zeros(2, 1, 12, 4)
    mask = torch.zeros(2, 1, 1, 12, dtype=torch.bool)
    mask[..., :9] = True
    k, v, m = decoding.trimmed_to_visible(key, value, mask)
    assert k.shape[2] == v.shape[2] == 9 and m is None
    mask[0, ..., 0] = False  # left padding: the mask stays, cut to the same positions
    k, v, m = decoding.trimmed_to_visible(key, value, mask)
    assert k.shape[2] == 9 and m.shape == (2, 1, 1, 9) and not m[0, ..., 0].any()


@pytest.mark.parametrize("family", FAST)
def test_generate_with_fast_decode_gives_transformers_tokens_and_logits(family):
    """Greedy generation, a left-padded batch: the same tokens, and per-step logits within float rounding."""
    model = tiny_model(family, attn_implementation="sdpa")
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :2] = 0
    options = dict(attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                   output_logits=True, return_dict_in_generate=True)  # fmt: skip
    expected = model.generate(ids, **options)
    hav.enable_fast_decode(model)
    assert model.config._attn_implementation == "hav_sdpa" and model.generation_config.cache_implementation == "static"
    got = model.generate(ids, **options)
    assert torch.equal(got.sequences, expected.sequences)
    for step_got, step_expected in zip(got.logits, expected.logits, strict=True):
        torch.testing.assert_close(step_got, step_expected, rtol=1e-4, atol=1e-5)


def test_fast_decode_on_a_converted_mqa_model_keeps_one_kv_head_and_beam_search_works():
    model = hav.convert(tiny_model("llama", attn_implementation="sdpa"), "mqa")
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = model.generate(ids, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    hav.enable_fast_decode(model)
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    got = model.generate(ids, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)
    model.generate(
        ids, max_new_tokens=2, do_sample=False, pad_token_id=0, **cache_kwargs(cache), cache_implementation=None
    )
    assert {layer.keys.shape[1] for layer in cache.layers} == {1}


def test_fast_decode_setting_survives_save_and_load(tmp_path):
    model = hav.enable_fast_decode(tiny_model("llama", attn_implementation="sdpa"))
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="hav_sdpa")
    assert loaded.generation_config.cache_implementation == "static"
    assert loaded.config._attn_implementation == "hav_sdpa"


@pytest.mark.parametrize("family", sorted(NOT_FAST))
def test_models_whose_attention_cannot_switch_are_refused_by_name(family):
    cls = type(tiny_model(family)).__name__
    with pytest.raises(ValueError, match=f"^{re.escape(not_fast_message(cls))}$"):
        hav.enable_fast_decode(tiny_model(family))


def test_a_falcon_variant_uses_the_fast_path_and_a_bloom_variant_is_refused():
    falcon = hav.convert(tiny_model("falcon", attn_implementation="sdpa"), "gqa", 2)  # the plugin's class
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    expected = falcon.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(hav.enable_fast_decode(falcon).generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0),
                       expected)  # fmt: skip
    with pytest.raises(ValueError, match=f"^{re.escape(not_fast_message('BloomAttnVariantForCausalLM'))}$"):
        hav.enable_fast_decode(hav.convert(tiny_model("bloom"), "gqa", 2))


@pytest.mark.parametrize("cache", timing.DECODE_CACHES)
def test_decode_step_reads_context_plus_one_positions_whatever_the_cache(cache):
    model = tiny_model("llama", attn_implementation="sdpa")  # 2 layers, 4 K/V heads of 8, fp32
    step, nbytes = timing.decode_step(model, batch=2, context=16, cache=cache, spare=5)
    assert nbytes == 2 * 2 * 4 * 17 * 8 * 2 * 4
    for _ in range(3):
        step()


def test_decode_step_refuses_an_unknown_cache():
    with pytest.raises(ValueError, match=r"^cache 'paged' is not one of \['static', 'dynamic'\]$"):
        timing.decode_step(tiny_model("llama"), batch=1, context=4, cache="paged")


def test_from_pretrained_fast_decode_loads_a_variant_on_the_fast_path(tmp_path):
    tiny_model("llama", attn_implementation="sdpa").save_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    plain = hav.AutoModelForCausalLM.from_pretrained(tmp_path, attn_variant="mqa", attn_implementation="sdpa")
    fast = hav.AutoModelForCausalLM.from_pretrained(tmp_path, attn_variant="mqa", fast_decode=True)
    assert fast.config._attn_implementation == "hav_sdpa" and fast.generation_config.cache_implementation == "static"
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(fast.generate(ids, **options), plain.generate(ids, **options))
    unchanged = hav.AutoModelForCausalLM.from_pretrained(tmp_path, fast_decode=True)  # no variant: the source
    assert unchanged.config._attn_implementation == "hav_sdpa"


def test_plugin_families_stack_the_query_heads_of_a_decode_step_under_plain_sdpa(sdpa_calls):
    """VariantAttention routes sdpa through the plugin's kernel: a one-token step reads (batch, G, H/G, d) queries
    against G K/V heads, whatever the cache, and gives transformers' tokens."""
    model = hav.convert(tiny_model("gpt2", attn_implementation="sdpa"), "gqa", 2)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    eager = hav.convert(tiny_model("gpt2", attn_implementation="eager"), "gqa", 2)
    expected = eager.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    sdpa_calls.clear()
    assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0), expected)
    decode = [(query, key) for query, key in sdpa_calls if query[2] != 5]  # after the prefill of 5 tokens
    assert decode and all(query == (2, 2, 4, 8) and key[1] == 2 for query, key in decode)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fast_decode_on_cuda_follows_transformers_sdpa(family, dtype):
    """On CUDA hav_sdpa is transformers' sdpa; with the StaticCache the logits stay within the dtype's rounding."""
    model = hav.convert(tiny_model(family, attn_implementation="sdpa"), "gqa", 2).to("cuda", dtype)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1)).cuda()
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
                   return_dict_in_generate=True, disable_compile=True)  # fmt: skip
    expected = model.generate(ids, **options)
    got = hav.enable_fast_decode(model).generate(ids, **options)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for step, (step_got, step_expected) in enumerate(zip(got.logits, expected.logits, strict=True)):
        torch.testing.assert_close(step_got, step_expected, **tolerance)
        if not torch.equal(got.sequences[:, 7 + step], expected.sequences[:, 7 + step]):
            assert dtype == torch.bfloat16  # a near tie may round the other way in bf16; later steps then differ
            break


def test_a_falcon_variant_loads_with_the_fast_kernel_named_at_load_time(tmp_path):
    """Falcon's own layers pick a class per kernel they know; the plugin builds them under sdpa, then switches."""
    source = tiny_model("falcon", attn_implementation="sdpa")
    source.save_pretrained(tmp_path / "src")
    hav.convert(source, "gqa", 2).save_pretrained(tmp_path / "variant")
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(6))
    expected = hav.convert(source, "gqa", 2).generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    for model in (
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "variant", attn_implementation="hav_sdpa"),
        hav.AutoModelForCausalLM.from_pretrained(
            tmp_path / "src", attn_variant="gqa", num_key_value_heads=2, attn_implementation="hav_sdpa"
        ),  # fmt: skip
    ):
        assert model.config._attn_implementation == "hav_sdpa"
        assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0), expected)
