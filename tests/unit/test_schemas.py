from libs.tools.schemas_gen import SCHEMAS_DIR, rendered


def test_schema_files_match_the_event_models() -> None:
    """Run `make schemas` after changing an event model (and think: is it a breaking change,
    i.e. a new topic version?)."""
    expected = rendered()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(expected)
    for name, text in expected.items():
        assert on_disk[name] == text, f"schemas/{name} drifted from the model"
