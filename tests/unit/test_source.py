"""Durations, sizes and located YAML."""

from __future__ import annotations

import pytest

from drivers.source import ProblemsError, parse, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("1m", 60), ("15m", 900), ("1h", 3600), ("30d", 2592000), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m", "", "nanms", "1w", 30])
def test_not_durations(text: object) -> None:
    assert parse_duration(text) is None


def test_sizes() -> None:
    assert parse_size("512MB") == 512_000_000 and parse_size("2GB") == 2_000_000_000
    assert parse_size("1GiB") == 1024**3 and parse_size("lots") is None


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    with pytest.raises(ProblemsError) as err:
        parse("a: 1\nb: 2\na: 3\n", "x.yaml")
    assert "x.yaml:3 a: duplicate key (first on line 1)" in err.value.render()


def test_lines_are_kept() -> None:
    node = parse("top:\n  - {x: 1}\n  - y: 2\n", "x.yaml")
    assert node.value["top"].value[1].line == 3
