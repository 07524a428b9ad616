"""The README's table of families is the registry's."""

from pathlib import Path

from hf_attn_variants.families import families_table


def test_readme_families_table_matches_the_registry():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("<!-- families-table")
    block = readme[readme.index("\n", start) + 1 : readme.index("<!-- /families-table -->")].strip()
    assert block == families_table(), "regenerate the README table with hf_attn_variants.families.families_table()"
