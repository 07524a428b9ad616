"""Names users choose from on the command line and in the API, in the standard library alone.

The command line builds its parser from these before torch is imported, so ``hf-attn-variants --help``
answers at once; the modules that act on a choice import it from here.
"""

ATTN_VARIANTS = ("mha", "gqa", "mqa")
KV_INIT_METHODS = ("mean", "first", "random", "aligned", "svd")  # the last two: hf_attn_variants.merging
DTYPES = ("auto", "float32", "bfloat16", "float16")  # of saved weights; auto: the source's own
CACHE_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")  # of the KV cache
ENGINES = ("ctranslate2", "llama.cpp")  # inference engines a variant is timed in (hf_attn_variants.engines)
EXPORT_ENGINES = ("ctranslate2", "llama.cpp")  # inference engines a variant is exported to (hf-attn-variants export)
