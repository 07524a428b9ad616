"""The ``hf-attn-variants`` console script: parses the command line before the package is imported.

Importing ``hf_attn_variants`` registers the plugin with transformers, which imports torch and transformers
(seconds). The command line's parser needs neither, so this script loads the package's modules without
running its ``__init__``, parses, and only then, for a command that runs, completes the import. ``--help``,
``--version`` and a mistyped command (exit 2) therefore answer at once.
"""

import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "hf_attn_variants" not in sys.modules:
        spec = importlib.util.find_spec("hf_attn_variants")
        package = importlib.util.module_from_spec(spec)
        sys.modules["hf_attn_variants"] = package  # submodules import; __init__ has not run yet
        from hf_attn_variants import cli

        if argv[:1] != ["train"]:  # train's options are parsed by its own (transformers') parser
            cli.build_parser().parse_args(argv)  # exits here on --help, --version or bad usage
        spec.loader.exec_module(package)  # the package's __init__: transformers, registrations
    from hf_attn_variants import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
