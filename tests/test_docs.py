"""Documentation that must agree with the code."""

from cwnnk.config import _rows, configuration_markdown, load_schema
from conftest import REPO


def test_configuration_reference_is_generated_from_the_schema():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration_markdown(), "regenerate: python -m cwnnk.config > docs/configuration.md"


def test_every_schema_key_is_described_and_defaulted():
    schema = load_schema()
    rows = list(_rows(schema, schema["$defs"]))
    assert len(rows) > 40
    reference = (REPO / "docs" / "configuration.md").read_text()
    for key, _, default, description in rows:
        assert f"`{key}`" in reference, key
        assert description, f"{key} has no description"
        required_item_key = "[]." in key and key.split(".")[-1] in ("channels", "kernel", "name", "path", "model")
        assert default != "" or required_item_key, f"{key} has no default"
