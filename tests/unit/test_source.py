"""Durations, sizes and located YAML."""

from __future__ import annotations

import time

import pytest

from drivers.source import (
    MAX_DEPTH,
    MAX_NODES,
    Fields,
    ProblemsError,
    Sink,
    control_character,
    parse,
    parse_duration,
    parse_size,
)


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


# --- what a hostile or mistaken file must not do: hang, blow the stack, pass a NaN -------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ProblemsError) as err:
        parse(text, "x.yaml")
    return [str(p) for p in err.value.problems]


def test_an_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    start = time.monotonic()
    found = problems_of("\n".join(lines) + "\n")
    assert time.monotonic() - start < 3  # about 0.3 s on this 2-core machine when idle; under load, slower
    assert found == [f"x.yaml:1 YAML: more than {MAX_NODES} values (counting every use of an alias): not a config file"]


def test_an_alias_bomb_in_a_key_is_refused() -> None:
    text = "a: &a [x, x, x, x, x, x, x, x]\n"
    text += "b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    found = problems_of(text + "? *c\n: 1\n")
    assert found == ["x.yaml:3 YAML: a key must be a name, not a list or mapping"]  # where the alias points


@pytest.mark.parametrize(
    "text", ["[" * 100_000, "{a: " * 100_000, "- " * 100_000, "".join("  " * i + "k:\n" for i in range(3000))]
)
def test_deep_nesting_is_refused_within_a_second(text: str) -> None:
    start = time.monotonic()
    [found] = problems_of(text)
    assert time.monotonic() - start < 1
    assert found.endswith(f"YAML: nested more than {MAX_DEPTH} levels deep")


def test_nesting_up_to_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 1  # the root mapping is a level too
    node = parse("a: " + "[" * depth + "]" * depth + "\n", "x.yaml")
    assert isinstance(node.value["a"].value, list)


def test_an_anchor_inside_itself() -> None:
    assert problems_of("a: &a [1, *a]\n") == [
        f"x.yaml:1 YAML: nested more than {MAX_DEPTH} levels deep (counting every use of an alias)"
    ]


def test_ordinary_aliases_still_work() -> None:
    node = parse("a: &serial {baudrate: 9600, parity: E}\nb: *serial\n", "x.yaml")
    assert node.plain() == {"a": {"baudrate": 9600, "parity": "E"}, "b": {"baudrate": 9600, "parity": "E"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &d {x: 1}\nb:\n  <<: *d\n", "x.yaml:3 YAML: merge keys (<<) are not supported"),
        ("a: !!int many\n", "x.yaml:1 YAML: invalid literal for int() with base 10: 'many'"),
        ("a: !!python/object:os.system ls\n", "x.yaml:1 YAML: could not determine a constructor for the tag"),
    ],
)
def test_values_their_tag_refuses_are_located_problems_not_tracebacks(text: str, message: str) -> None:
    [found] = problems_of(text)
    assert found.startswith(message)


def fields(text: str) -> tuple[Fields, Sink]:
    sink = Sink("x.yaml")
    return Fields(parse(text, "x.yaml"), "", sink), sink


@pytest.mark.parametrize(("text", "shown"), [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), (".NaN", "nan")])
def test_a_number_must_be_finite(text: str, shown: str) -> None:
    f, sink = fields(f"a: 1\nx: {text}\n")
    assert f.get("x", float, 1.0) == 1.0
    assert [str(p) for p in sink.problems] == [f"x.yaml:2 x: must be a finite number, not {shown}"]


def test_big_finite_numbers_are_numbers() -> None:
    f, sink = fields(f"x: 1.0e+300\ny: 12345678901234567890\nz: {10**400}\n")
    assert f.get("x", float) == 1e300 and f.get("y", float) == 12345678901234567890.0 and not sink.problems
    assert f.get("z", float, 1.0) == 1.0
    assert [str(p) for p in sink.problems] == ["x.yaml:3 z: must be a finite number, not inf"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("ok", ""),
        ("a\x00b", "\\x00 at position 2"),
        ("\x1b[31m", "\\x1b at position 1"),
        ("x\x7f", "\\x7f at position 2"),
    ],
)
def test_control_characters(text: str, found: str) -> None:
    assert control_character(text) == found


def test_text_fields_refuse_control_characters_but_not_their_default() -> None:
    f, sink = fields('a: "gw\\0"\n')
    assert f.text("a", "dflt") == "dflt" and f.text("b", "x\ny") == "x\ny"
    assert [str(p) for p in sink.problems] == ["x.yaml:1 a: must not contain control characters (\\x00 at position 3)"]


def test_warnings_are_located_and_kept_apart_from_problems() -> None:
    f, sink = fields("a: 1\nb: 2\n")
    f.warn("b", "is odd")
    assert not sink.problems and [str(w) for w in sink.warnings] == ["x.yaml:2 b: is odd"]
    sink.raise_if_any()
