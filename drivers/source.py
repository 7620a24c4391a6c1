"""YAML with line numbers, and problems that say where they are.

Both the site config (collector.config) and the meter models (drivers.model) are YAML written by
people. Every problem found in them is reported with the file, the line and the path of the field,
all at once, before any I/O. PyYAML's composer keeps a mark on every node; this module keeps those
marks next to the values so a validator can point at the line a technician has to fix.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, located."""

    file: str
    line: int  #: 1-based; 0 when the whole file is meant
    path: str  #: the field, e.g. ``meters[3].calibration.ct_ratio``
    message: str
    label: str = ""  #: the item's own name, e.g. a meter id, shown in quotes

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = self.path
        if self.label:
            head, _, rest = path.partition(".")
            path = f'{head} "{self.label}": {rest}' if rest else f'{head} "{self.label}"'
        return f"{where} {path}: {self.message}" if path else f"{where} {self.message}"


class ProblemsError(Exception):
    """Raised with every problem found in a file; nothing should have started."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path))
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.file}: {n} error{'s' if n != 1 else ''}, nothing started"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass(slots=True)
class Node:
    """A YAML value with the line it stands on.

    ``value`` is a scalar (str, int, float, bool, None), a ``dict[str, Node]`` or a ``list[Node]``.
    """

    value: Any
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)  #: mapping key -> line of the key

    def plain(self) -> Any:
        """The value without line numbers."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


#: Limits on what a YAML file may hold. A real site config is a few thousand values nested six deep;
#: past these limits it is a mistake or an attack ("billion laughs": aliases expanding exponentially),
#: refused as a located problem in well under a second instead of a hang or a RecursionError.
MAX_DEPTH = 64
MAX_NODES = 100_000


class _TooDeep(yaml.MarkedYAMLError):
    """Nesting beyond MAX_DEPTH, found while composing (before any node is expanded)."""


class _Loader(yaml.SafeLoader):
    depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused by the scanner already: else it looks 1024 characters ahead for each "[" or "{"
        # that could start a key, which costs about half a second before the composer sees depth 65.
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Limit(Exception):
    """Expanding the composed nodes went past a limit; ``line`` is where."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parse(text: str, file: str) -> Node:
    """Parse YAML into located nodes; a syntax error or a duplicate key becomes a ProblemsError.

    Nesting deeper than MAX_DEPTH and more than MAX_NODES values (counting every use of an alias)
    are problems too: the same parser reads the site config and every meter model.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _TooDeep as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ProblemsError(file, [Problem(file, line, "", f"YAML: {exc.problem}")]) from None
    except RecursionError:
        raise ProblemsError(file, [Problem(file, 0, "", "YAML: nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        msg = f"YAML syntax: {exc.problem or exc.context}"
        if exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            msg += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise ProblemsError(file, [Problem(file, line, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ProblemsError(file, [Problem(file, 0, "", f"YAML: {exc}")]) from None
    if root is None:
        return Node({}, 1)
    problems: list[Problem] = []
    converter = _Converter(_Loader(""), file, problems)
    try:
        node = converter.convert(root, 1)
    except _Limit as exc:
        raise ProblemsError(file, [Problem(file, exc.line, "", f"YAML: {exc.message}")]) from None
    except RecursionError:
        raise ProblemsError(file, [Problem(file, 0, "", "YAML: nested too deeply")]) from None
    if problems:
        raise ProblemsError(file, problems)
    return node


def load_file(path: Path) -> Node:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProblemsError(str(path), [Problem(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ProblemsError(str(path), [Problem(str(path), 0, "", "not UTF-8 text")]) from None
    return parse(text, str(path))


class _Converter:
    """Composed YAML nodes -> located Nodes, counting values and depth as aliases are expanded.

    ``yaml.compose`` shares the node an alias points to, so composing is linear; expanding is not
    (nine levels of ten aliases are a billion values), and an anchor can even contain its own alias.
    """

    def __init__(self, loader: _Loader, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.count = 0

    def convert(self, node: yaml.Node, depth: int) -> Node:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            raise _Limit(line, f"more than {MAX_NODES} values (counting every use of an alias): not a config file")
        if depth > MAX_DEPTH:
            raise _Limit(line, f"nested more than {MAX_DEPTH} levels deep (counting every use of an alias)")
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            key_lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                kline = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):  # str() of an aliased list can be exponential
                    self.problems.append(
                        Problem(self.file, kline, "", "YAML: a key must be a name, not a list or mapping")
                    )
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(Problem(self.file, kline, "", "YAML: merge keys (<<) are not supported"))
                    continue
                key = self.scalar(key_node)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    self.problems.append(
                        Problem(self.file, kline, key, f"duplicate key (first on line {key_lines[key]})")
                    )
                    continue
                out[key] = self.convert(value_node, depth + 1)
                key_lines[key] = kline
            return Node(out, line, key_lines)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.convert(n, depth + 1) for n in node.value], line)
        return Node(self.scalar(node), line)

    def scalar(self, node: yaml.Node) -> Any:
        """The value of a scalar; a bad tag or a value its tag refuses (``!!int x``) is a problem."""
        try:
            return self.loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            message = str(exc.problem or exc.context)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            message = str(exc) or type(exc).__name__
        self.problems.append(Problem(self.file, node.start_mark.line + 1, "", f"YAML: {message}"))
        return None


def suggest(word: str, choices: Iterable[str]) -> str:
    """`; did you mean "x"?` or nothing."""
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f'; did you mean "{match[0]}"?' if match else ""


class Fields:
    """Reads the fields of one YAML mapping, recording problems instead of raising.

    Every accessor returns a usable default after recording a problem, so validation goes on and
    reports every problem in the file at once. ``done()`` reports keys nobody asked for.
    """

    def __init__(self, node: Node, path: str, sink: Sink, label: str = "") -> None:
        self.node = node
        self.path = path
        self.sink = sink
        self.label = label
        self.ok = isinstance(node.value, dict)
        self.data: dict[str, Node] = node.value if self.ok else {}
        self.used: set[str] = set()
        if not self.ok:
            sink.add(node.line, path, f"must be a mapping, not {describe(node.value)}", label)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def line(self, key: str) -> int:
        return self.data[key].line if key in self.data else self.node.line

    def raw(self, key: str) -> Node | None:
        self.used.add(key)
        return self.data.get(key)

    def problem(self, key: str, message: str) -> None:
        self.sink.add(self.line(key), self.sub(key), message, self.label)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        node = self.raw(key)
        if node is None or node.value is None:
            if required and self.ok:
                self.sink.add(self.node.line, self.sub(key), "is required", self.label)
            return default
        value = node.value
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value_ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if abs(value) < 2**1024 else math.inf  # float() would raise OverflowError
            value_ok = True
        else:
            value_ok = isinstance(value, kinds)
        if not value_ok:
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            hint = "; quote it" if str in kinds and isinstance(value, int | float) else ""
            self.sink.add(node.line, self.sub(key), f"must be {names}, not {describe(value)}{hint}", self.label)
            return default
        if isinstance(value, float) and not math.isfinite(value):  # YAML .nan, .inf, -.inf
            self.sink.add(node.line, self.sub(key), f"must be a finite number, not {value}", self.label)
            return default
        return value

    def text(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """A string field that must hold no control characters (NUL, newline, tab, ESC, DEL...)."""
        value = self.get(key, str, default, required=required)
        if isinstance(value, str) and self.has(key):  # a default is the program's, checked where it comes from
            found = control_character(value)
            if found:
                self.problem(key, f"must not contain control characters ({found})")
                return default
        return value

    def warn(self, key: str, message: str) -> None:
        self.sink.warn(self.line(key), self.sub(key), message, self.label)

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(key, str, None, required=required)
        if value is None:
            return default
        if value not in choices:
            self.problem(key, f'"{value}" is not one of {", ".join(choices)}{suggest(value, choices)}')
            return default
        return value

    def done(self) -> None:
        """Report every key that no accessor read: a typo must not pass silently."""
        known = sorted(self.used)
        for key in self.data:
            if key not in self.used:
                line = self.node.key_lines.get(key, self.node.line)
                self.sink.add(line, self.sub(key), f"unknown key{suggest(key, known)}", self.label)


class Sink:
    """Collects the problems of one file, and its warnings: worth saying, but not refused."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, line: int, path: str, message: str, label: str = "") -> None:
        self.problems.append(Problem(self.file, line, path, message, label))

    def warn(self, line: int, path: str, message: str, label: str = "") -> None:
        self.warnings.append(Problem(self.file, line, path, message, label))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ProblemsError(self.file, self.problems)


_KIND_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


def describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"{value} (a number)"
    return f'"{value}" (a string)'


def control_character(text: str) -> str:
    """The first control character in text (C0, DEL) as ``\\x00 at position 6``, or ""."""
    for i, c in enumerate(text):
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"\\x{ord(c):02x} at position {i + 1}"
    return ""


def items(node: Node | None, path: str, sink: Sink) -> Iterator[tuple[str, Node]]:
    """The elements of a YAML list as (``path[i]``, node); a non-list is one problem."""
    if node is None or node.value is None:
        return
    if not isinstance(node.value, list):
        sink.add(node.line, path, f"must be a list, not {describe(node.value)}")
        return
    for i, child in enumerate(node.value):
        yield f"{path}[{i}]", child


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _number_with_unit(text: str, units: dict[str, float] | dict[str, int]) -> float | None:
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            number = text[: -len(unit)].strip()
            try:
                value = float(number)
            except ValueError:
                return None
            return value * units[unit] if math.isfinite(value) else None
    return None


def parse_duration(value: Any) -> float | None:
    """Seconds from ``500ms``, ``30s``, ``1m``, ``15m``, ``1h``, ``30d``; None if not a duration."""
    if isinstance(value, bool) or not isinstance(value, str):
        return None
    return _number_with_unit(value, _DURATION_UNITS)


def parse_size(value: Any) -> int | None:
    """Bytes from ``512MB``, ``2GB`` (decimal) or ``1GiB``; None if not a size."""
    if isinstance(value, bool) or not isinstance(value, str):
        return None
    n = _number_with_unit(value, _SIZE_UNITS)
    return int(n) if n is not None else None


def duration_field(f: Fields, key: str, default: float | None, *, low: float = 0.0, high: float = 1e9) -> float | None:
    """A duration field: ``30s``; reports a bad one and returns the default."""
    node = f.raw(key)
    if node is None or node.value is None:
        return default
    seconds = parse_duration(node.value)
    if seconds is None:
        f.problem(key, f"{describe(node.value)} is not a duration; write e.g. 500ms, 30s, 1m, 1h, 30d")
        return default
    if not low <= seconds <= high:
        f.problem(key, f"{node.value} is outside {format_duration(low)}..{format_duration(high)}")
        return default
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"
