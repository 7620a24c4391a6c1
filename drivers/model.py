"""The meter model schema: one YAML file per model, loaded into frozen, checked objects.

A model file says what a meter *is*: its registers, their types and word order, the unit the meter
counts in. Loading converts every point to its canonical name's unit (docs/design.md §3): a meter that
counts watts gets a scale of 0.001 and publishes kilowatts. Every problem in a model file is
reported at once with file:line, like a config error.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from drivers.cjt188.frame import Field
from drivers.dlt645.frame import ValueFormat
from drivers.quantities import INVERTER_STATES, QUANTITIES, Nature, Ratio, canonical_unit
from drivers.source import Fields, Node, Sink, describe, duration_field, items, load_file, suggest


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BCD16 = "bcd16"  #: 4 packed BCD digits in one register
    BCD32 = "bcd32"  #: 8 packed BCD digits in two registers

    @property
    def registers(self) -> int:
        return _REGISTERS[self]

    @property
    def signed(self) -> bool:
        return self in (DataType.INT16, DataType.INT32, DataType.INT64)

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def span(self) -> int | None:
        """How many raw steps the register counts before it wraps to 0 (None: a float never wraps);
        a signed register is taken to wrap at its largest positive value."""
        if self.is_float:
            return None
        if self in (DataType.BCD16, DataType.BCD32):
            return int(10 ** (4 * self.registers))
        return int(2 ** (16 * self.registers - (1 if self.signed else 0)))


_REGISTERS = {
    DataType.INT16: 1, DataType.UINT16: 1, DataType.BCD16: 1,
    DataType.INT32: 2, DataType.UINT32: 2, DataType.FLOAT32: 2, DataType.BCD32: 2,
    DataType.INT64: 4, DataType.UINT64: 4, DataType.FLOAT64: 4,
}  # fmt: skip


class Function(StrEnum):
    HOLDING = "holding"  #: function code 03
    INPUT = "input"  #: function code 04

    @property
    def code(self) -> int:
        return 3 if self is Function.HOLDING else 4


KINDS = ("electricity", "water", "pv", "heat", "gas")
PROTOCOLS = ("modbus", "dlt645", "cjt188", "sunspec")
_FORMAT = re.compile(r"^(X+)(?:\.(X+))?$")
ORDERS = ("big", "little")
T = TypeVar("T")
DERIVED_MAX = 256  #: derived values kept per model (read plans: one per point list and gap)
MAX_REQUEST_REGISTERS = 125  #: the Modbus limit for functions 03 and 04


@dataclass(frozen=True, slots=True)
class Point:
    """One quantity read from a meter."""

    name: str  #: canonical quantity name (docs/design.md §3) or the model's own
    address: int  #: 0-based wire address, not the 3xxxx/4xxxx label
    type: DataType = DataType.FLOAT32
    function: Function = Function.HOLDING
    word_order: str = "big"  #: "big": most significant word first (AB CD)
    byte_order: str = "big"  #: "big": most significant byte first within a word
    scale: float = 1.0  #: raw × scale = value in the canonical unit (unit conversion included)
    unit: str = "-"  #: canonical unit of the published value
    meter_unit: str = "-"  #: the unit the meter counts in, as the model file says
    nature: Nature = Nature.INSTANT
    ratio: Ratio = Ratio.NONE  #: which transformer ratios scale it
    invalid: tuple[int, ...] = ()  #: raw bit patterns meaning "not available", e.g. 0x8000
    scale_factor: str | None = None  #: name of a point holding a power-of-ten exponent (SunSpec *_SF)
    add: tuple[str, ...] = ()  #: points whose values are added (an integer total + its fraction)
    #: points holding a setting code whose ``factors`` multiply this value (a totaliser's unit, its
    #: multiplier): applied after ``add``; a code the table lacks makes the value an error
    scale_by: tuple[str, ...] = ()
    #: (code, multiplier): what this setting register's codes mean, for the points that ``scale_by`` it
    factors: tuple[tuple[int, float], ...] = ()
    publish: bool = True  #: False: read for `read --raw` or as a helper, never published
    #: (vendor code, canonical number): ``states:`` maps what the register holds to INVERTER_STATES;
    #: a code not in it is an error on the point, never a number
    states: tuple[tuple[int, int], ...] = ()
    line: int = 0  #: line in the model file, for messages
    dlt645: ValueFormat | None = None  #: DL/T 645: how the value sits in the reply (address: the DI)
    cjt188: Field | None = None  #: CJ/T 188: which value of the reply (address: the DI)

    @property
    def registers(self) -> int:
        return self.type.registers

    @property
    def end(self) -> int:
        """First register after this point."""
        return self.address + self.type.registers

    @property
    def span(self) -> float | None:
        """Where the value wraps to 0, in the canonical unit before calibration; None: it does not
        (a float, or a CJ/T 188 flow, whose unit comes with each reply)."""
        if self.dlt645 is not None:
            return self.dlt645.span * self.scale
        steps = self.type.span
        if self.cjt188 is not None or self.scale_by or steps is None:
            return None  # a CJ/T 188 unit, or a multiplier, comes with each reading
        return steps * self.scale


@dataclass(frozen=True, slots=True)
class Model:
    """A meter model: what a meter is, as data."""

    name: str  #: vendor-model, the file's stem: "eastron-sdm630"
    vendor: str
    model: str
    kind: str
    protocol: str
    manual: str  #: the document the map was written from, with its version
    points: tuple[Point, ...]
    max_registers: int = MAX_REQUEST_REGISTERS  #: the model's own limit per request
    gap: int | None = None  #: largest gap (registers) worth reading to save a request
    pause: float = 0.0  #: seconds of silence the meter needs between requests
    single_requests: bool = False  #: one request per point (devices that refuse block reads)
    edition: int = 0  #: DL/T 645: 2007 (4-byte identifiers, read 11H) or 1997 (2-byte, read 01H)
    unreadable: tuple[tuple[int, int], ...] = ()  #: inclusive register ranges a read must not cover
    probe: str | None = None  #: the point `scan` reads to recognise the model
    path: str = ""
    _by_name: dict[str, Point] = field(default_factory=dict, compare=False, repr=False)
    _derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.points})

    def derived(self, key: Any, build: Callable[[], T]) -> T:
        """What ``build`` computes from this model alone (a read plan), computed once per ``key``:
        a model does not change after loading, and a poll should not re-plan what the last one did."""
        try:
            return self._derived[key]  # type: ignore[no-any-return]
        except KeyError:
            if len(self._derived) >= DERIVED_MAX:  # the keys are a site's point lists: few; never unbounded
                self._derived.clear()
            value = self._derived[key] = build()
            return value

    def point(self, name: str) -> Point:
        return self._by_name[name]

    def has(self, name: str) -> bool:
        return name in self._by_name

    @property
    def published(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.publish)

    def needed_for(self, names: list[str] | tuple[str, ...]) -> list[Point]:
        """The points to read for ``names``: the points themselves and their helpers."""
        out: dict[str, Point] = {}
        stack = list(names)
        while stack:
            p = self._by_name[stack.pop()]
            if p.name in out:
                continue
            out[p.name] = p
            stack.extend(p.add)
            stack.extend(p.scale_by)
            if p.scale_factor:
                stack.append(p.scale_factor)
        return sorted(out.values(), key=lambda p: (p.function.value, p.address))


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MODEL_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")


def load_model(path: Path) -> Model:
    """Load and check one model file; raises ProblemsError with every problem located."""
    root = load_file(path)
    sink = Sink(str(path))
    model = _build(root, path, sink)
    sink.raise_if_any()
    assert model is not None
    return model


def _build(root: Node, path: Path, sink: Sink) -> Model | None:
    f = Fields(root, "", sink)
    if not f.ok:
        return None
    if not _MODEL_NAME.match(path.stem):
        sink.add(0, "", f'file name "{path.name}" must be vendor-model.yaml in lower case, e.g. eastron-sdm630.yaml')
    head = {
        "vendor": f.get("vendor", str, "", required=True),
        "model": f.get("model", str, "", required=True),
        "kind": f.choice("kind", KINDS, "electricity", required=True),
        "protocol": f.choice("protocol", PROTOCOLS, "modbus", required=True),
        "manual": f.get("manual", str, "", required=True),
        "probe": f.get("probe", str),
        "single_requests": f.get("single_requests", bool, False),
    }
    protocol = head["protocol"]
    edition = _edition(f) if protocol == "dlt645" else 0
    defaults, limits = _defaults(Fields(f.raw("defaults") or Node({}, root.line), "defaults", sink))
    unreadable = _unreadable(f, sink)
    points = [
        p
        for where, node in items(f.raw("points"), "points", sink)
        if (p := _point(node, where, sink, defaults, protocol))
    ]
    f.done()
    if not points and not sink.problems and protocol != "sunspec":
        sink.add(root.line, "points", "a model needs at least one point")
    _check_points(points, sink, head["probe"], root.line, overlap=protocol in ("modbus", "sunspec"))
    return Model(
        name=path.stem, points=tuple(points), unreadable=unreadable, path=str(path), edition=edition, **head, **limits
    )


def _edition(f: Fields) -> int:
    edition: int = f.get("edition", int, 2007)
    if edition not in (1997, 2007):
        f.problem("edition", f"{edition} is not 1997 or 2007")
        return 2007
    return edition


def _defaults(d: Fields) -> tuple[_Defaults, dict[str, Any]]:
    """``defaults:``: what points inherit, and the request limits (max_registers, gap, pause)."""
    defaults = _Defaults(
        Function(d.choice("function", tuple(x.value for x in Function), "holding")),
        DataType(d.choice("type", tuple(x.value for x in DataType), "float32")),
        d.choice("word_order", ORDERS, "big"),
        d.choice("byte_order", ORDERS, "big"),
        _markers(d),
    )
    max_registers = d.get("max_registers", int, MAX_REQUEST_REGISTERS)
    if not 1 <= max_registers <= MAX_REQUEST_REGISTERS:
        d.problem("max_registers", f"{max_registers} is outside 1..{MAX_REQUEST_REGISTERS}")
        max_registers = MAX_REQUEST_REGISTERS
    gap = d.get("gap", int)
    if gap is not None and gap < 0:
        d.problem("gap", "must be >= 0")
        gap = None
    pause = duration_field(d, "pause", 0.0, high=10.0) or 0.0
    d.done()
    return defaults, {"max_registers": max_registers, "gap": gap, "pause": pause}


def _markers(d: Fields) -> dict[DataType, tuple[int, ...]]:
    """``invalid: {int32: 0x7FFFFFFF, uint32: 0xFFFFFFFF}``: what every point of a type sends for
    "not available" (a point's own ``invalid:`` replaces it; ``invalid: []`` opts out)."""
    node = d.raw("invalid")
    plain = node.plain() if node is not None else {}
    if not isinstance(plain, dict):
        d.problem("invalid", "must map a type to its marker, e.g. {int32: 0x7FFFFFFF, uint32: 0xFFFFFFFF}")
        return {}
    out: dict[DataType, tuple[int, ...]] = {}
    for name, marker in plain.items():
        markers = marker if isinstance(marker, list) else [marker]
        if name not in set(DataType) or DataType(name).is_float:
            d.problem(
                "invalid", f'"{name}" is not an integer type ({", ".join(t for t in DataType if not t.is_float)})'
            )
        elif not all(_is_pattern(m) and m < 2 ** (16 * DataType(name).registers) for m in markers):
            d.problem("invalid", f"{name}: {marker!r} is not a {DataType(name).registers * 16}-bit pattern")
        else:
            out[DataType(name)] = tuple(markers)
    return out


def _unreadable(f: Fields, sink: Sink) -> tuple[tuple[int, int], ...]:
    spans: list[tuple[int, int]] = []
    for where, node in items(f.raw("unreadable"), "unreadable", sink):
        span = node.plain()
        if (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(x, int) for x in span)
            and 0 <= span[0] <= span[1] <= 0xFFFF
        ):
            spans.append((span[0], span[1]))
        else:
            sink.add(node.line, where, "must be [first, last], two register addresses 0..65535")
    return tuple(spans)


@dataclass(frozen=True, slots=True)
class _Defaults:
    """A model's ``defaults:``, which every point may override."""

    function: Function
    type: DataType
    word_order: str
    byte_order: str
    invalid: dict[DataType, tuple[int, ...]] = field(default_factory=dict)  #: "not available" markers by type


def _point(node: Node, where: str, sink: Sink, defaults: _Defaults, protocol: str = "modbus") -> Point | None:
    f = Fields(node, where, sink)
    if not f.ok:
        return None
    name = f.get("name", str, "", required=True)
    f.label = name
    address = _address(f, protocol)
    dlt645 = _dlt645(f) if protocol == "dlt645" else None
    cjt188 = Field(f.choice("field", tuple(x.value for x in Field), "current")) if protocol == "cjt188" else None
    wire = {
        "type": DataType(f.choice("type", tuple(x.value for x in DataType), defaults.type.value)),
        "function": Function(f.choice("function", tuple(x.value for x in Function), defaults.function.value)),
        "word_order": f.choice("word_order", ORDERS, defaults.word_order),
        "byte_order": f.choice("byte_order", ORDERS, defaults.byte_order),
    }
    scale = f.get("scale", float, 1.0)
    if scale == 0:
        f.problem("scale", "must not be 0")
    meter_unit = f.get("unit", str, "-")
    invalid = _plain_list(f, "invalid", _is_pattern, "must be a bit pattern (e.g. 0x8000) or a list of them")
    if invalid is None:
        invalid = defaults.invalid.get(wire["type"], ())
    elif any(m >= 2 ** (16 * wire["type"].registers) for m in invalid):
        f.problem("invalid", f"a marker is wider than the point's {wire['type'].value}")
    sf = f.get("scale_factor", str)
    add = _plain_list(f, "add", lambda x: isinstance(x, str), "must be a point name or a list of them") or ()
    scale_by = _plain_list(f, "scale_by", lambda x: isinstance(x, str), "must be a point name or a list of them") or ()
    factors = _factors(f, wire["type"])
    publish = f.get("publish", bool, True)
    states = _states(f, name, wire["type"])
    nature_text = f.choice("nature", tuple(n.value for n in Nature))
    ratio_text = f.choice("ratio", tuple(r.value for r in Ratio))
    f.get("note", str)  # free text for people
    f.done()
    if name and not _NAME.match(name):
        f.problem("name", f'"{name}" must be lower case letters, digits and _')
    unit, factor, nature, ratio = _quantity(f, name, meter_unit, nature_text, ratio_text)
    return Point(
        name, address, scale=scale * factor, unit=unit, meter_unit=meter_unit, nature=nature, ratio=ratio,
        invalid=invalid, scale_factor=sf, add=add, scale_by=scale_by, factors=factors, publish=publish,
        states=states, line=node.line,
        dlt645=dlt645, cjt188=cjt188, **wire,
    )  # fmt: skip


def _address(f: Fields, protocol: str) -> int:
    address: int = f.get("address", int, -1, required=True)
    top = 0xFFFFFFFF if protocol == "dlt645" else 0xFFFF
    if address != -1 and not 0 <= address <= top:
        what = "a data identifier" if protocol in ("dlt645", "cjt188") else "0-based wire address"
        f.problem("address", f"{address} is outside 0..{top} ({what})")
    return address


def _dlt645(f: Fields) -> ValueFormat:
    """``format: XXXXXX.XX`` (8 BCD digits, 2 after the point), ``signed``, ``offset`` in a block."""
    digits = decimals = 0
    fmt = f.get("format", str, "", required=True)
    m = _FORMAT.match(fmt) if fmt else None
    if fmt and (m is None or (len(m.group(1)) + len(m.group(2) or "")) % 2):
        f.problem("format", f'"{fmt}" is not a BCD format such as XXXXXX.XX (an even number of X)')
    elif m is not None:
        decimals = len(m.group(2) or "")
        digits = len(m.group(1)) + decimals
    signed = f.get("signed", bool, False)
    offset = f.get("offset", int, 0)
    if offset < 0 or offset > 200:
        f.problem("offset", f"{offset} is outside 0..200 (bytes into the data block)")
        offset = 0
    return ValueFormat(digits, decimals, signed, offset)


def _factors(f: Fields, dtype: DataType) -> tuple[tuple[int, float], ...]:
    """``factors: {0: 1, 1: 0.001}``: a setting register's codes -> the multiplier each one means."""
    node = f.raw("factors")
    if node is None or node.value is None:
        return ()
    if not isinstance(node.value, dict) or not node.value:
        f.problem("factors", "must map each code to a multiplier, e.g. {0: 1, 1: 0.001}")
        return ()
    if dtype.is_float:
        f.problem("factors", f"a setting code is an integer; {dtype.value} is not an integer type")
    out: list[tuple[int, float]] = []
    for code, target in node.value.items():
        line, where = node.key_lines.get(code, node.line), f.sub(f"factors.{code}")
        factor = target.value
        if not code.isdigit():
            f.sink.add(line, where, f'"{code}" is not a code (write 3 or 0x0003)', f.label)
        elif isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
            f.sink.add(line, where, f"must be a multiplier above 0, not {describe(factor)}", f.label)
        else:
            out.append((int(code), float(factor)))
    return tuple(out)


def _states(f: Fields, name: str, dtype: DataType) -> tuple[tuple[int, int], ...]:
    """``states: {0: standby, 1: mppt, 3: fault}``: the vendor's codes -> canonical state names
    (drivers/quantities.py INVERTER_STATES); reading publishes the canonical number."""
    node = f.raw("states")
    if node is None or node.value is None:
        return ()
    if not isinstance(node.value, dict) or not node.value:
        f.problem("states", "must map each vendor code to a state, e.g. {0: standby, 1: mppt, 3: fault}")
        return ()
    if name != "inverter_state":
        f.problem("states", "only inverter_state has a state vocabulary")
    if dtype.is_float:
        f.problem("states", f"a state code is an integer; {dtype.value} is not an integer type")
    bits = 16 * dtype.registers
    out: list[tuple[int, int]] = []
    for code, target in node.value.items():
        line, where = node.key_lines.get(code, node.line), f.sub(f"states.{code}")
        state = target.value
        if not code.isdigit() or int(code) >= 2**bits:  # YAML keys 3 and 0x5500 arrive as "3", "21760"
            f.sink.add(line, where, f'"{code}" is not a {bits}-bit state code (write 3 or 0x5500)', f.label)
        elif not isinstance(state, str) or state not in INVERTER_STATES:
            known = ", ".join(INVERTER_STATES)
            shown = f'"{state}"' if isinstance(state, str) else describe(state)
            if state is False:
                known += '; quote "off": YAML reads off as false'
            f.sink.add(line, where, f"{shown} is not a state ({known}){suggest(str(state), INVERTER_STATES)}", f.label)
        else:
            out.append((int(code), INVERTER_STATES[state]))
    return tuple(out)


def _is_pattern(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _plain_list(f: Fields, key: str, ok: Callable[[object], bool], problem: str) -> tuple[Any, ...] | None:
    """A value or a list of values, each passing ``ok``; None when absent, () when wrong (reported)."""
    node = f.raw(key)
    if node is None:
        return None
    plain = node.plain()
    plain = plain if isinstance(plain, list) else [plain]
    if all(ok(x) for x in plain):
        return tuple(plain)
    f.problem(key, problem)
    return ()


def _quantity(
    f: Fields, name: str, meter_unit: str, nature_text: str | None, ratio_text: str | None
) -> tuple[str, float, Nature, Ratio]:
    """The canonical unit (and the factor to it), nature and ratio; a canonical name fixes all three."""
    conv = canonical_unit(meter_unit)
    if conv is None:
        f.problem("unit", f'unknown unit "{meter_unit}"{suggest(meter_unit, _unit_names())}')
        conv = (meter_unit, 1.0)
    unit, factor = conv
    q = QUANTITIES.get(name)
    nature = Nature(nature_text) if nature_text else (q.nature if q else Nature.INSTANT)
    ratio = Ratio(ratio_text) if ratio_text else Ratio.NONE
    if q is not None:
        ratio = q.ratio
        if ratio_text and Ratio(ratio_text) is not q.ratio:
            f.problem("ratio", f"{name} is scaled by {q.ratio.value} (canonical)")
        if unit != q.unit:
            f.problem("unit", f'"{meter_unit}" cannot be converted to {q.unit}, the unit of {name}')
        if nature_text and nature is not q.nature:
            f.problem("nature", f"{name} is a canonical {q.nature.value}")
    return unit, (1.0 if nature is Nature.STATE else factor), nature, ratio


def _unit_names() -> list[str]:
    from drivers.quantities import UNIT_CONVERSIONS

    return list(UNIT_CONVERSIONS)


def _check_points(points: list[Point], sink: Sink, probe: str | None, line: int, *, overlap: bool = True) -> None:
    by_name: dict[str, Point] = {}
    for p in points:
        if p.name in by_name:
            sink.add(p.line, f"points.{p.name}", f"duplicate point name (first on line {by_name[p.name].line})")
        by_name.setdefault(p.name, p)
        if overlap and p.end > 0x10000:
            sink.add(p.line, f"points.{p.name}", f"{p.type.value} at {p.address} runs past register 65535")
    for p in points:
        refs = [(p.scale_factor, "scale_factor"), *((a, "add") for a in p.add), *((b, "scale_by") for b in p.scale_by)]
        for ref, what in refs:
            if ref is not None and ref not in by_name:
                sink.add(p.line, f"points.{p.name}.{what}", f'unknown point "{ref}"{suggest(ref, by_name.keys())}')
        for ref in p.scale_by:
            if ref in by_name and not by_name[ref].factors:
                sink.add(p.line, f"points.{p.name}.scale_by", f'"{ref}" has no factors: table (what its codes mean)')
        if p.scale_factor and p.scale_factor in by_name and by_name[p.scale_factor].type.is_float:
            sink.add(p.line, f"points.{p.name}.scale_factor", "a scale factor register must be an integer type")
    ordered = sorted(points, key=lambda p: (p.function.value, p.address)) if overlap else []
    twinned: set[tuple[Function, int]] = set()
    for a, b in itertools.pairwise(ordered):
        if a.function is not b.function or b.address >= a.end:
            continue
        if _twins(a, b) and (a.function, a.address) not in twinned:
            twinned.add((a.function, a.address))  # inverter_state and its raw inverter_state_code
            continue
        hint = (
            " (only a point with states: and one point for its raw code may share them)"
            if a.address == b.address
            else ""
        )
        sink.add(
            b.line,
            f"points.{b.name}.address",
            f'registers {b.address}..{b.end - 1} overlap "{a.name}" ({a.address}..{a.end - 1}){hint}',
        )
    if probe is not None and probe not in by_name:
        sink.add(line, "probe", f'unknown point "{probe}"{suggest(probe, by_name.keys())}')


def _twins(a: Point, b: Point) -> bool:
    """Two points reading the same registers the same way, one through its ``states:`` table."""
    same = (a.address, a.type, a.word_order, a.byte_order) == (b.address, b.type, b.word_order, b.byte_order)
    return same and bool(a.states) != bool(b.states)
