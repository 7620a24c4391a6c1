"""SunSpec: find what a PV inverter declares and read it without a hand-written map.

Discovery (SunSpec Information Model specification, docs/reference/protocols-and-meters.md §4.5): the marker "SunS"
(0x5375 0x6E53) at holding register 40000, 0 or 50000 (0-based), then a chain of model blocks, each
``ID, L, L registers``, ending with ID 0xFFFF. The layouts of models 1, 101, 102, 103 and 160 come
from the SunSpec Alliance's own definitions shipped in pysunspec2 (``sunspec2/models/json``), not
from a transcription. The result is an ordinary ``drivers.model.Model`` with absolute addresses and
scale-factor points (value × 10^SF), so the planner and the codec read it like any other meter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from drivers.errors import BadReply, ExceptionReply
from drivers.modbus.device import RegisterReader
from drivers.model import DataType, Function, Model, Point
from drivers.quantities import QUANTITIES, Nature, Ratio, canonical_unit

BASES = (40000, 0, 50000)
MARKER = [0x5375, 0x6E53]  # "SunS"
END = 0xFFFF
INVERTERS = (101, 102, 103, 111, 112, 113)  #: single/split/three-phase, integer + SF and float
METERS = (201, 202, 203, 204, 211, 212, 213, 214)  #: single/split/wye/delta AC meters, integer + SF and float
SUPPORTED = (1, *INVERTERS, 160, *METERS)

#: SunSpec point type -> (our type, "not implemented" bit pattern)
TYPES: dict[str, tuple[DataType, int | None]] = {
    "int16": (DataType.INT16, 0x8000),
    "uint16": (DataType.UINT16, 0xFFFF),
    "count": (DataType.UINT16, 0xFFFF),
    "enum16": (DataType.UINT16, 0xFFFF),
    "sunssf": (DataType.INT16, 0x8000),
    "acc32": (DataType.UINT32, 0),
    "uint32": (DataType.UINT32, 0xFFFFFFFF),
    "int32": (DataType.INT32, 0x80000000),
    "bitfield32": (DataType.UINT32, 0xFFFFFFFF),
    "float32": (DataType.FLOAT32, 0x7FC00000),  # models 111-113, 211-214: NaN is "not implemented"
}
UNITS = {
    "A": "A", "V": "V", "W": "W", "Hz": "Hz", "VA": "VA", "var": "var", "Pct": "%", "Wh": "Wh", "C": "°C",
    "PF": "-",  # 211-214 give cos φ itself (-1..1), not a percentage
}  # fmt: skip

#: inverter models 101/102/103: SunSpec point -> our name
INVERTER = {
    "AphA": "current_l1", "AphB": "current_l2", "AphC": "current_l3",
    "PPVphAB": "voltage_l1_l2", "PPVphBC": "voltage_l2_l3", "PPVphCA": "voltage_l3_l1",
    "PhVphA": "voltage_l1", "PhVphB": "voltage_l2", "PhVphC": "voltage_l3",
    "W": "ac_power", "Hz": "frequency", "VA": "apparent_power", "VAr": "reactive_power", "PF": "power_factor",
    "WH": "energy_yield_total", "DCA": "dc_current", "DCV": "dc_voltage", "DCW": "dc_power",
    "TmpCab": "inverter_temperature", "St": "inverter_state", "StVnd": "inverter_state_code",
}  # fmt: skip
#: AC meter models 201-204 (integer + SF) and 211-214 (float): SunSpec point -> our name. 20x names a
#: line-to-line voltage PhVphAB, 21x PPVphAB. In a device that is also an inverter (SolarEdge lists its
#: meters in the inverter's chain) the meter's points are published with "meter_" before the name.
METER = {
    "AphA": "current_l1", "AphB": "current_l2", "AphC": "current_l3",
    "PhVphA": "voltage_l1", "PhVphB": "voltage_l2", "PhVphC": "voltage_l3",
    "PhVphAB": "voltage_l1_l2", "PhVphBC": "voltage_l2_l3", "PhVphCA": "voltage_l3_l1",
    "PPVphAB": "voltage_l1_l2", "PPVphBC": "voltage_l2_l3", "PPVphCA": "voltage_l3_l1",
    "Hz": "frequency", "W": "active_power", "WphA": "active_power_l1", "WphB": "active_power_l2",
    "WphC": "active_power_l3", "VA": "apparent_power", "VAphA": "apparent_power_l1", "VAphB": "apparent_power_l2",
    "VAphC": "apparent_power_l3", "VAR": "reactive_power", "VARphA": "reactive_power_l1",
    "VARphB": "reactive_power_l2", "VARphC": "reactive_power_l3", "PF": "power_factor", "PFphA": "power_factor_l1",
    "PFphB": "power_factor_l2", "PFphC": "power_factor_l3", "TotWhImp": "energy_import", "TotWhExp": "energy_export",
}  # fmt: skip
#: MPPT model 160, per module i: SunSpec point -> our name pattern
MPPT = {"DCA": "dc_current_{i}", "DCV": "dc_voltage_{i}", "DCW": "dc_power_{i}", "DCWH": "dc_energy_{i}"}


class NotSunSpec(BadReply):
    """No "SunS" marker at any base address."""


@dataclass(frozen=True, slots=True)
class Block:
    model_id: int
    address: int  #: address of the block's ID register
    length: int  #: L: registers after ID and L


@cache
def definition(model_id: int) -> dict[str, Any]:
    text = (resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json").read_text()
    group: dict[str, Any] = json.loads(text)["group"]
    return group


async def discover(reader: RegisterReader, unit: int, *, retries: int | None = None) -> list[Block]:
    """The model chain the device declares; raises NotSunSpec, or a TransportError."""
    base = None
    for candidate in BASES:
        try:
            words = await reader.read(unit, Function.HOLDING, candidate, 2, retries=retries)
        except ExceptionReply:
            continue
        if words == MARKER:
            base = candidate
            break
    if base is None:
        raise NotSunSpec(f'unit {unit}: no SunSpec marker ("SunS") at {", ".join(map(str, BASES))}')
    blocks: list[Block] = []
    address = base + 2
    for _ in range(64):
        model_id, length = await reader.read(unit, Function.HOLDING, address, 2, retries=retries)
        if model_id == END:
            return blocks
        blocks.append(Block(model_id, address, length))
        address += 2 + length
    raise BadReply(f"unit {unit}: SunSpec model chain does not end")


def label(name: str) -> str:
    """The SunSpec name of one of our scale-factor points (``m103_w_sf`` -> ``W_SF``), else ``name``."""
    prefix, _, rest = name.partition("_")
    if not (prefix[:1] == "m" and prefix[1:].isdigit() and int(prefix[1:]) in SUPPORTED):
        return name
    for p in definition(int(prefix[1:]))["points"]:
        if str(p["name"]).lower() == rest:
            return str(p["name"])
    return name


def _point(
    name: str,
    address: int,
    sptype: str,
    units: str | None,
    sf: str | None,
    *,
    publish: bool,
    nature: Nature | None = None,
) -> Point:
    dtype, sentinel = TYPES[sptype]
    unit, factor = canonical_unit(UNITS.get(units or "", "-")) or ("-", 1.0)
    q = QUANTITIES.get(name)
    if nature is None:
        nature = q.nature if q else (Nature.COUNTER if sptype == "acc32" else Nature.INSTANT)
    if nature is Nature.STATE:
        factor = 1.0
    return Point(
        name=name,
        address=address,
        type=dtype,
        function=Function.HOLDING,
        scale=factor,
        unit=unit,
        meter_unit=units or "-",
        nature=nature,
        ratio=q.ratio if q else Ratio.NONE,
        invalid=(sentinel,) if sentinel is not None else (),
        scale_factor=sf,
        publish=publish,
    )


def _layout(points: list[dict[str, Any]], start: int) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    offset = start
    for p in points:
        out[p["name"]] = (offset, p)
        offset += int(p.get("size", 1))
    return out


def _size(points: list[dict[str, Any]]) -> int:
    return sum(int(p.get("size", 1)) for p in points)


def build_model(blocks: list[Block], common: dict[str, str] | None = None) -> Model:
    """A Model from the discovered blocks (supported models only; others are skipped)."""
    points: list[Point] = []
    declared = [b.model_id for b in blocks]
    inverter = any(m in INVERTERS for m in declared)
    meter_prefix = "meter_" if inverter else ""
    for b in blocks:
        if b.model_id not in SUPPORTED or b.model_id == 1:
            continue
        group = definition(b.model_id)
        prefix = f"m{b.model_id}_"
        fixed = _layout(group["points"], b.address)

        def sf_point(sf_name: str, where: dict[str, tuple[int, dict[str, Any]]], pre: str) -> str:
            pname = (pre + sf_name).lower()
            if not any(p.name == pname for p in points):
                addr, spec = where[sf_name]
                points.append(_point(pname, addr, spec["type"], None, None, publish=False, nature=Nature.STATE))
            return pname

        if b.model_id in INVERTERS or b.model_id in METERS:
            names = INVERTER if b.model_id in INVERTERS else {k: meter_prefix + v for k, v in METER.items()}
            for sp_name, ours in names.items():
                if sp_name not in fixed or any(p.name == ours for p in points):
                    continue  # a second meter block in one chain: its first is read
                addr, spec = fixed[sp_name]
                sf = sf_point(spec["sf"], fixed, prefix) if spec.get("sf") else None
                points.append(_point(ours, addr, spec["type"], spec.get("units"), sf, publish=True))
        elif b.model_id == 160:
            module = group["groups"][0]
            fixed_len = _size(group["points"]) - 2  # without ID and L
            size = _size(module["points"])
            count = max(0, (b.length - fixed_len) // size) if size else 0
            for i in range(count):
                mod = _layout(module["points"], b.address + 2 + fixed_len + i * size)
                for sp_name, pattern in MPPT.items():
                    addr, spec = mod[sp_name]
                    sf = sf_point(spec["sf"], fixed, prefix) if spec.get("sf") else None
                    points.append(
                        _point(pattern.format(i=i + 1), addr, spec["type"], spec.get("units"), sf, publish=True)
                    )
    points.sort(key=lambda p: p.address)
    info = common or {}
    return Model(
        name="sunspec",
        vendor=info.get("Mn", "SunSpec"),
        model=info.get("Md", "inverter"),
        kind="pv" if inverter or not any(m in METERS for m in declared) else "electricity",
        protocol="sunspec",
        manual="SunSpec Information Models (pysunspec2 JSON definitions), models " + ", ".join(map(str, declared)),
        points=tuple(points),
        max_registers=120,
    )


async def read_common(
    reader: RegisterReader, unit: int, blocks: list[Block], *, retries: int | None = None
) -> dict[str, str]:
    """Manufacturer, model, version and serial number from model 1 (empty if the device has none)."""
    block = next((b for b in blocks if b.model_id == 1), None)
    if block is None:
        return {}
    words = await reader.read(unit, Function.HOLDING, block.address, min(block.length + 2, 68), retries=retries)
    out = {}
    for name, (offset, spec) in _layout(definition(1)["points"], 0).items():
        if spec["type"] == "string" and offset + spec["size"] <= len(words):
            raw = b"".join(w.to_bytes(2, "big") for w in words[offset : offset + spec["size"]])
            out[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return out
