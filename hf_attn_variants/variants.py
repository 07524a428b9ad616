"""Naming and validation of attention variants: MHA, GQA, MQA and their K/V head counts."""

from __future__ import annotations

import numbers

from .choices import ATTN_VARIANTS, KV_INIT_METHODS

MERGE_KV_INITS = ("aligned", "svd")  # kv_init methods that merge whole layers (hf_attn_variants.merging)
GROUPINGS = ("contiguous", "similarity")


def variant_name(num_heads: int, num_kv_heads: int) -> str:
    """``mha``, ``gqa`` or ``mqa``, derived from the head counts."""
    if num_kv_heads == num_heads:
        return "mha"
    return "mqa" if num_kv_heads == 1 else "gqa"


def variant_label(num_heads: int, num_kv_heads: int) -> str:
    """A display label such as ``MHA-16``, ``GQA-4`` or ``MQA``."""
    name = variant_name(num_heads, num_kv_heads)
    return "MQA" if name == "mqa" else f"{name.upper()}-{num_kv_heads}"


def gqa_choices(num_heads: int) -> list[int]:
    """K/V head counts that make a GQA model out of ``num_heads`` query heads."""
    return [g for g in range(2, num_heads) if num_heads % g == 0]


def resolve_num_kv_heads(attn_variant: str | None, num_key_value_heads: int | None, num_heads: int) -> int:
    """The number of K/V heads that ``attn_variant`` (and ``num_key_value_heads``) ask for.

    Raises:
        ValueError: unknown variant, ``gqa`` without ``num_key_value_heads``, a count that does not divide
            ``num_heads`` or does not fit the variant. The message names the bad value and the valid choices.
    """
    from .families.base import MAX_HEADS, check_count

    check_count("the source", "num_attention_heads", num_heads, MAX_HEADS)  # before choices are listed from it
    if num_key_value_heads is not None:
        if not isinstance(num_key_value_heads, numbers.Integral) or isinstance(num_key_value_heads, bool):
            divisors = [g for g in range(1, num_heads + 1) if num_heads % g == 0]
            raise ValueError(
                f"num_key_value_heads={num_key_value_heads!r} must be a whole number, not a "
                f"{type(num_key_value_heads).__name__}; valid choices: {divisors}"
            )
        num_key_value_heads = int(num_key_value_heads)
    if attn_variant is None:
        if num_key_value_heads is None:
            raise ValueError(f"give attn_variant (one of {list(ATTN_VARIANTS)}) or num_key_value_heads")
        attn_variant = (
            variant_name(num_heads, num_key_value_heads) if _divides(num_key_value_heads, num_heads) else "gqa"
        )
    if not isinstance(attn_variant, str) or attn_variant.lower() not in ATTN_VARIANTS:
        raise ValueError(f"attn_variant={attn_variant!r} is not one of {list(ATTN_VARIANTS)}")
    attn_variant = attn_variant.lower()
    expected = {"mha": num_heads, "mqa": 1}.get(attn_variant)
    if expected is not None:
        if num_key_value_heads not in (None, expected):
            raise ValueError(
                f"attn_variant={attn_variant!r} means num_key_value_heads={expected} for {num_heads} query heads, "
                f"got num_key_value_heads={num_key_value_heads}; use attn_variant='gqa' for other counts"
            )
        return expected
    choices = gqa_choices(num_heads)
    if num_key_value_heads is None:
        raise ValueError(
            f"attn_variant='gqa' needs num_key_value_heads; valid choices for {num_heads} query heads: {choices}"
        )
    g = num_key_value_heads
    if g not in choices:
        if not isinstance(g, int) or not 1 <= g <= num_heads:
            why = f"is not between 1 and num_attention_heads={num_heads}"
        elif num_heads % g:
            why = f"does not divide num_attention_heads={num_heads}"
        else:
            why = f"makes {'MQA' if g == 1 else 'MHA'}, not GQA, with num_attention_heads={num_heads}"
        raise ValueError(
            f"num_key_value_heads={g} {why}; valid choices for attn_variant='gqa': {choices or 'none (use mha or mqa)'}"
        )
    return num_key_value_heads


def check_kv_init(kv_init: str) -> str:
    if kv_init not in KV_INIT_METHODS:
        raise ValueError(f"kv_init={kv_init!r} is not one of {list(KV_INIT_METHODS)}")
    return kv_init


def parse_variant_list(text: str) -> list[tuple[str, int | None]]:
    """Parse ``"mha,gqa:4,mqa"`` into ``[("mha", None), ("gqa", 4), ("mqa", None)]``."""
    parsed = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition(":")
        if name.lower() not in ATTN_VARIANTS:
            raise ValueError(f"variant {item!r} is not one of {list(ATTN_VARIANTS)} (write GQA as gqa:G)")
        if count and not count.isdigit():
            raise ValueError(f"variant {item!r}: the K/V head count after ':' must be a positive integer")
        parsed.append((name.lower(), int(count) if count else None))
    if not parsed:
        raise ValueError(f"no variants in {text!r}; write for instance mha,gqa:4,mqa")
    return parsed


def _divides(g: int, h: int) -> bool:
    return isinstance(g, int) and 0 < g <= h and h % g == 0
