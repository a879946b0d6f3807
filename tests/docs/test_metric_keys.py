"""docs/monitoring.md's metric keys are the keys a real run writes, as the reference lists them."""

import re

from tests.support import ROOT


def _rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line.split(" | ") for line in section.splitlines() if line.startswith("| ")][2:]


def _keys(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_<>]+)`", cell))


def written() -> dict[str, set[str]]:
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    return {row[0].strip("| "): _keys(row[1]) for row in _rows(reference, "## Metadata keys")}


def documented() -> dict[str, set[str]]:
    monitoring = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    owner = ""
    for row in _rows(monitoring, "## Metric keys"):
        owner = row[0].strip("| ").replace("`", "") or owner
        found.setdefault(owner, set()).update(_keys(row[1]))
    return found


def _covers(pattern: str, key: str) -> bool:
    return key == pattern or ("<" in pattern and key.startswith(pattern.split("<")[0]))


def test_every_documented_metric_key_is_written_and_every_written_one_documented():
    real, docs = written(), documented()
    assert set(docs) == set(real)
    for owner, keys in real.items():
        unknown = {p for p in docs[owner] if not any(_covers(p, k) for k in keys)}
        assert not unknown, f"monitoring.md names keys {owner} never writes: {sorted(unknown)}"
        missing = {k for k in keys if not any(_covers(p, k) for p in docs[owner])}
        assert not missing, f"monitoring.md does not document {owner}'s {sorted(missing)}"
