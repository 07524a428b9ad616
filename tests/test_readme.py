"""The README's table of families and docs/families.md's tables are the registry's."""

from pathlib import Path

import pytest
import transformers

from hf_attn_variants.families import derived, derived_families_table, families_table, refused_table

# the tables list the families of the transformers derived.py was derived from; an older one registers fewer
AT_DERIVATION = pytest.mark.skipif(
    transformers.__version__ != derived.TRANSFORMERS_VERSION,
    reason=f"the docs' tables are those of transformers {derived.TRANSFORMERS_VERSION}",
)

ROOT = Path(__file__).parents[1]


def generated_block(text: str, name: str) -> str:
    start = text.index(f"<!-- {name}")
    return text[text.index("\n", start) + 1 : text.index(f"<!-- /{name} -->")].strip()


@AT_DERIVATION
def test_readme_families_table_matches_the_registry():
    block = generated_block((ROOT / "README.md").read_text(), "families-table")
    assert block == families_table(), "regenerate the README table with hf_attn_variants.families.families_table()"


@AT_DERIVATION
@pytest.mark.parametrize(
    "name, table",
    [("derived-table", derived_families_table), ("refused-table", refused_table)],
    ids=["derived-table", "refused-table"],  # stable ids: pytest-xdist's workers must collect the same names
)
def test_docs_families_tables_match_the_registry(name, table):
    block = generated_block((ROOT / "docs" / "families.md").read_text(), name)
    assert block == table(), f"regenerate docs/families.md's {name} with hf_attn_variants.families.{table.__name__}()"
