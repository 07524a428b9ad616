"""Write hf_attn_variants/families/derived.py: every causal-LM model_type of transformers, derived or refused.

    PYTHONPATH=. python scripts/derive_families.py            # rewrite derived.py
    PYTHONPATH=. python scripts/derive_families.py --check    # exit 1 if derived.py is out of date
    PYTHONPATH=. python scripts/derive_families.py --tables   # then: the README's and docs/families.md's tables

Then run tests/test_derived_families.py: it proves every derived type on tiny random models (exact MHA identity,
GQA->MHA expansion, equal-head pooling, the cache's K/V heads, reload by plain transformers). A type that fails it
goes into ``KNOWN_DEPARTURES`` in hf_attn_variants/families/generic.py with what failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_attn_variants.families import derived_families_table, families_table, hand_written_model_types, refused_table
from hf_attn_variants.families.generic import render_module, survey

ROOT = Path(__file__).parents[1]
TARGET = ROOT / "hf_attn_variants" / "families" / "derived.py"
TABLES = {  # file: the generated blocks in it, each between <!-- name ... --> and <!-- /name -->
    ROOT / "README.md": {"families-table": families_table},
    ROOT / "docs" / "families.md": {"derived-table": derived_families_table, "refused-table": refused_table},
}


def write_tables() -> None:
    """Rewrite the generated tables from the registry as imported (so from derived.py as it was at start)."""
    for path, blocks in TABLES.items():
        text = path.read_text()
        for name, table in blocks.items():
            start = text.index("\n", text.index(f"<!-- {name}")) + 1
            end = text.index(f"<!-- /{name} -->")
            text = text[:start] + table() + "\n" + text[end:]
        path.write_text(text)
        print(f"{path}: {', '.join(blocks)} rewritten")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with derived.py instead of writing it")
    parser.add_argument("--tables", action="store_true", help="rewrite the README's and docs' tables of families")
    args = parser.parse_args()
    if args.tables:
        write_tables()
        return 0
    derived, refused = survey(hand_written_model_types())
    text = render_module(derived, refused)
    if args.check:
        same = TARGET.read_text() == text
        print("derived.py is up to date" if same else "derived.py is out of date: run scripts/derive_families.py")
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"{TARGET}: {len(derived)} derived, {len(refused)} refused model types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
