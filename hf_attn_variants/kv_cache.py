"""The KV-cache memory plan of a model's variants, from its config alone (no weights are loaded)."""

from __future__ import annotations

import torch

from .choices import CACHE_DTYPES
from .families import family_for
from .heads import kv_cache_bytes_per_token
from .variants import resolve_num_kv_heads, variant_label

MAX_BUDGET = 2**50  # 1 PiB: more memory than one machine has; a larger budget is a typo (1e30)

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
              "TiB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes in ``"8GiB"``, ``"512 MiB"``, ``"1.5GB"`` or ``"1000000"``.

    Raises:
        ValueError: not a positive number followed by one of the units.
    """
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2) if match else None
    if match is None or (unit and unit not in SIZE_UNITS) or not 0 < float(match.group(1)) < float("inf"):
        raise ValueError(f"size {text!r} is not a positive number with a unit from {list(SIZE_UNITS)}")
    return int(float(match.group(1)) * SIZE_UNITS[unit or "B"])


def cache_nbytes(cache) -> int:
    """Bytes a transformers cache holds: its key and value tensors, over all layers."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``512 B``, ``7.50 KiB``, ``1.41 GiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.2f} {units[power]}"


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of a cache dtype given by name (``bfloat16``) or as a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(CACHE_DTYPES)}")
    return getattr(torch, dtype).itemsize


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None``: unknown): CUDA's free memory; on the CPU, the
    kernel's MemAvailable, capped by a cgroup memory limit and by this process's address-space limit."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    limits = []
    meminfo = _read_numbers("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        limits.append(meminfo * 1024)  # kB
    for limit_file, used_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        limit, used = _read_numbers(limit_file), _read_numbers(used_file)
        if limit is not None and used is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
            limits.append(max(limit - used, 0))
    try:
        import resource

        address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
        mapped = _read_numbers("/proc/self/status", "VmSize:")
        if address_space != resource.RLIM_INFINITY and mapped is not None:
            limits.append(max(address_space - mapped * 1024, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def _read_numbers(path: str, key: str | None = None) -> int | None:
    """The number in the file ``path`` (or on its line starting with ``key``); ``None`` if there is none."""
    try:
        with open(path) as handle:
            lines = [line for line in handle if key is None or line.startswith(key)]
    except OSError:
        return None
    words = lines[0].removeprefix(key or "").split() if lines else []
    return int(words[0]) if words and words[0].isdigit() else None


def cached_tokens_per_layer(config, num_layers: int, seq_len: int) -> list[int]:
    """Tokens each layer's cache holds after ``seq_len`` tokens: sliding-window layers keep only the last
    ``sliding_window - 1`` (as transformers' caches do between steps), the others keep all."""
    window = getattr(config, "sliding_window", None)
    layer_types = (
        getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * num_layers
    )
    return [min(seq_len, window - 1) if kind == "sliding_attention" and window else seq_len for kind in layer_types]


def kv_cache_plan(
    config,
    variants: list[tuple[str, int | None]],
    seq_len: int,
    batch: int = 1,
    dtype: str | torch.dtype = "float32",
) -> list[dict]:
    """One row per variant: K/V heads, KV-cache bytes per token, total bytes, and the ratio to MHA.

    ``bytes_per_token`` is what each token adds while every layer still holds it; ``total_bytes`` counts
    what the cache holds for ``seq_len`` tokens, sliding-window layers capped at their window.

    Args:
        config: the model's config (any supported family, plugin variant configs included).
        variants: ``(attn_variant, num_key_value_heads)`` pairs, as ``parse_variant_list`` returns them.
        seq_len, batch: the cached tokens per sequence and the number of sequences.
        dtype: the cache's element type.
    """
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number of at least 1")
    family = family_for(config)
    family.check_config(config)  # head and layer counts within bounds before anything is sized from them
    heads, layers, head_dim = family.num_heads(config), family.num_layers(config), family.head_dim(config)
    element = dtype_bytes(dtype)
    mha_per_token = kv_cache_bytes_per_token(layers, heads, head_dim, element)
    held_tokens = sum(cached_tokens_per_layer(config, layers, seq_len))  # token-layers held, over all layers
    rows = []
    for attn_variant, count in variants:
        kv_heads = resolve_num_kv_heads(attn_variant, count, heads)
        per_token = kv_cache_bytes_per_token(layers, kv_heads, head_dim, element)
        rows.append(
            {
                "variant": variant_label(heads, kv_heads),
                "num_key_value_heads": kv_heads,
                "bytes_per_token": per_token,
                "total_bytes": per_token * held_tokens // layers * batch,
                "fraction_of_mha": per_token / mha_per_token,
                "source": kv_heads == family.num_kv_heads(config),
            }
        )
    return rows


def allocated_cache_bytes(config, num_key_value_heads: int, seq_len: int, batch: int, dtype, device="meta") -> int:
    """Bytes of the ``StaticCache`` transformers allocates for this variant, ``batch`` x ``seq_len`` tokens.

    The cache is built by transformers from the variant's own config and initialised layer by layer with
    the variant's K/V shapes, on ``device`` (``meta``: shapes only, nothing allocated; ``cpu``/``cuda``:
    really allocated, zero-filled so the pages are committed).
    """
    from transformers import StaticCache

    family = family_for(config)
    target = family.target_config(config, num_key_value_heads)
    cache = StaticCache(config=target, max_cache_len=seq_len)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kv = torch.zeros(batch, num_key_value_heads, 1, family.head_dim(config), dtype=dtype, device=device)
    for layer in cache.layers:
        layer.lazy_initialization(kv, kv)
        if device != "meta":
            layer.keys.zero_()
            layer.values.zero_()
    return cache_nbytes(cache)


def largest_batch(config, num_key_value_heads: int, seq_len: int, budget: int, dtype, device="meta") -> dict:
    """The largest batch whose cache (as transformers allocates it) fits ``budget`` bytes, checked by allocating.

    Returns ``{"max_batch", "allocated_bytes", "next_batch_bytes"}``: the plan's batch, the bytes of its cache
    allocated on ``device``, and the bytes one more sequence would need (over ``budget``).

    Raises:
        ValueError: a budget over ``MAX_BUDGET``, one in which not even one sequence fits, or (on a real
            device) a cache larger than the memory the device has free: it is refused before allocating.
    """
    if budget > MAX_BUDGET:
        raise ValueError(
            f"a budget of {budget:.4g} bytes is more memory than a machine has; give at most {format_bytes(MAX_BUDGET)}"
        )
    family = family_for(config)
    family.check_config(config)
    label = variant_label(family.num_heads(config), num_key_value_heads)
    per_sequence = allocated_cache_bytes(config, num_key_value_heads, seq_len, 1, dtype, "meta")
    batch = budget // per_sequence
    if batch == 0:
        raise ValueError(
            f"not even one sequence of {seq_len} tokens fits in {format_bytes(budget)}: the {label} cache needs "
            f"{format_bytes(per_sequence)} per sequence; give at least that, or fewer tokens"
        )
    if device != "meta":
        needed = allocated_cache_bytes(config, num_key_value_heads, seq_len, batch, dtype, "meta")
        free = available_memory(device)
        if free is not None and needed > free:
            raise ValueError(
                f"allocating the {label} cache of {batch} sequences ({format_bytes(needed)}) on {device} would take "
                f"more than its {format_bytes(free)} of free memory; plan it without allocating, or give a budget "
                "that fits"
            )
    try:
        allocated = allocated_cache_bytes(config, num_key_value_heads, seq_len, batch, dtype, device)
    except RuntimeError as err:  # the allocator's own refusal (torch.OutOfMemoryError is a RuntimeError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"allocating the {label} cache of {batch} sequences on {device} failed: {first}") from err
    return {
        "max_batch": batch,
        "allocated_bytes": allocated,
        "next_batch_bytes": allocated_cache_bytes(config, num_key_value_heads, seq_len, batch + 1, dtype, "meta"),
    }
