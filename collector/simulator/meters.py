"""Simulated meters: any Modbus model, with values that behave like a building.

Voltages sit near 230 V, an office load follows the working day, counters only rise (energy is the
integral of the simulated power), PV follows daylight, water flows in the day. Each unit id gets
its own seed so a bus of ten simulated meters shows ten different buildings. ``static`` freezes the
clock so an independent master (mbpoll) and our reader can be compared on identical registers.
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from collector.simulator.modbus import ILLEGAL_ADDRESS, ILLEGAL_VALUE, Slave
from drivers.modbus import codec
from drivers.model import Function, Model, Point
from drivers.quantities import INVERTER_STATES

NOMINAL_V = 230.0


@dataclass
class Building:
    """The physics behind one simulated meter."""

    seed: int
    kind: str
    rated_kw: float = 30.0
    start: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        rnd = random.Random(self.seed)
        self.rated_kw = rnd.uniform(8.0, 60.0) if self.kind != "water" else rnd.uniform(0.5, 6.0)
        self.phase = rnd.uniform(0, 2 * math.pi)
        # Total already counted when the meter was installed, so counters start at a plausible value.
        self.base_energy = rnd.uniform(1_000.0, 90_000.0)

    def load(self, t: float) -> float:
        """0..1: the share of rated load at wall-clock time t (office hours, a little noise)."""
        hour = (t / 3600.0) % 24.0
        working = 0.25 + 0.75 * max(0.0, math.sin(math.pi * (hour - 7.0) / 12.0))
        return min(1.0, working * (0.9 + 0.1 * math.sin(t / 37.0 + self.phase)))

    def daylight(self, t: float) -> float:
        hour = (t / 3600.0) % 24.0
        return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))

    def energy(self, t: float) -> float:
        """kWh: the closed-form integral of a mean load; never decreases."""
        return self.base_energy + self.rated_kw * 0.55 * (t - self.start + 86400.0 * 200) / 3600.0

    def values(self, t: float) -> dict[str, float]:
        v: dict[str, float] = {}
        wobble = math.sin(t / 11.0 + self.phase)
        for i, ph in enumerate(("l1", "l2", "l3")):
            v[f"voltage_{ph}"] = NOMINAL_V + 2.5 * math.sin(t / 23.0 + self.phase + i) + 0.3 * wobble
        for a, b in (("l1", "l2"), ("l2", "l3"), ("l3", "l1")):
            v[f"voltage_{a}_{b}"] = (v[f"voltage_{a}"] + v[f"voltage_{b}"]) / 2 * math.sqrt(3)
        pv = self.kind == "pv"
        share = self.daylight(t) if pv else self.load(t)
        p_total = self.rated_kw * share
        pf = 0.93 + 0.05 * math.sin(t / 300.0 + self.phase)
        for i, ph in enumerate(("l1", "l2", "l3")):
            p = p_total / 3 * (1 + 0.05 * math.sin(t / 17.0 + i))
            v[f"active_power_{ph}"] = p
            v[f"apparent_power_{ph}"] = p / pf
            v[f"reactive_power_{ph}"] = p / pf * math.sin(math.acos(pf))
            v[f"power_factor_{ph}"] = pf
            v[f"current_{ph}"] = p * 1000 / v[f"voltage_{ph}"] / pf
        v["current_n"] = abs(v["current_l1"] - v["current_l2"]) * 0.3
        v["active_power"] = p_total
        v["apparent_power"] = p_total / pf
        v["reactive_power"] = p_total / pf * math.sin(math.acos(pf))
        v["power_factor"] = pf
        v["frequency"] = 50.0 + 0.02 * math.sin(t / 29.0)
        e = self.energy(t)
        v["energy_import"] = e
        v["energy_export"] = e * 0.002
        v["energy_total"] = e * 1.002
        v["energy_combined"] = e * 0.998  # import - export
        for i, tariff in enumerate((0.08, 0.32, 0.35, 0.25), start=1):  # sharp, peak, flat, valley tariffs
            v[f"energy_import_t{i}"] = e * tariff
        v["reactive_energy_import"] = e * 0.31
        v["reactive_energy_export"] = e * 0.01
        v["ac_power"] = p_total
        v["dc_power"] = p_total * 1.03
        v["energy_yield_total"] = e
        v["energy_yield_today"] = self.rated_kw * 4 * ((t / 86400.0) % 1.0)
        v["inverter_state"] = 4 if share > 0 else 2
        flow = self.rated_kw * self.load(t)  # m³/h for water
        v["flow_rate"] = flow
        v["flow_velocity"] = flow / 10.0
        v["volume"] = self.base_energy / 10 + self.rated_kw * 0.5 * (t - self.start + 86400.0 * 200) / 3600.0
        v["volume_net"] = v["volume"]
        v["water_temperature"] = 14.0 + 2 * math.sin(t / 3600.0)
        v["signal_quality"] = 85.0
        return v


def _neutral_code(point: Point) -> int:
    return next((code for code, factor in point.factors if factor == 1.0), point.factors[0][0])


def default_for(point: Point) -> float:
    """Values of points the building does not know: settings and status registers."""
    if point.name.endswith("_ratio_setting"):
        return 1.0
    if point.name == "firmware_version":
        return 102.0
    return 0.0


class SimulatedMeter:
    """A Modbus device answering from a model's map; counters rise, readings wander."""

    def __init__(self, model: Model, unit: int, *, static: bool = False, clock: float | None = None) -> None:
        self.model = model
        self.unit = unit
        self.building = Building(seed=zlib.crc32(f"{model.name}/{unit}".encode()), kind=model.kind)
        self.static_at = clock if clock is not None else (time.time() if static else None)
        self.overrides: dict[str, float] = {}
        #: points this meter does not have: their registers hold the model's "not available" marker
        self.absent: set[str] = set()
        #: every Nth read that covers a counter returns 0 for it: a meter with a flaky register (tests)
        self.zero_every = 0
        self._counter_reads = 0
        self._images: dict[int, dict[int, int]] = {}
        self._image_time = -1.0

    def now(self) -> float:
        return self.static_at if self.static_at is not None else time.time()

    def engineering(self, t: float) -> dict[str, float]:
        """Every point's value in canonical units, as the meter would publish it."""
        world = self.building.values(t)
        out: dict[str, float] = {}
        for p in self.model.points:
            if p.factors and p.name not in self.overrides:
                out[p.name] = _neutral_code(p)  # a setting (a totaliser's unit): the code meaning x1
                continue
            out[p.name] = self.overrides.get(p.name, world.get(p.name, default_for(p)))
        return out

    def image(self, t: float) -> dict[int, dict[int, int]]:
        """function code -> {address: word}."""
        if t == self._image_time:
            return self._images
        values = self.engineering(t)
        images: dict[int, dict[int, int]] = {3: {}, 4: {}}
        raws: dict[str, float] = {}
        for p in self.model.points:
            for ref in p.scale_by:  # counted in the unit and multiplier the settings say
                values[p.name] /= dict(self.model.point(ref).factors).get(int(values[ref]), 1.0)
        for p in self.model.points:
            if p.add:  # integer total + fraction helpers: the helper takes what the total cannot hold
                whole = math.floor(values[p.name] / p.scale) * p.scale
                raws[p.name] = whole / p.scale
                rest = values[p.name] - whole
                for helper in p.add:
                    hp = self.model.point(helper)
                    raws[helper] = rest / hp.scale
                    rest = 0.0
        for p in self.model.points:
            if p.name not in raws:
                raws[p.name] = _code(p, values[p.name]) if p.states else values[p.name] / p.scale
        # A point with a states table last: its vendor code is what a raw-code twin at its address reads.
        for p in sorted(self.model.points, key=lambda p: bool(p.states)):
            if p.name in self.absent:
                words = codec.disarrange(p.invalid[0].to_bytes(2 * p.registers, "big"), p.word_order, p.byte_order)
            else:
                words = codec.encode(p, _fit(p, raws[p.name]))
            img = images[p.function.code]
            for i, w in enumerate(words):
                img[p.address + i] = w
        self._images, self._image_time = images, t
        return images

    def read(self, function: int, address: int, count: int) -> list[int] | int:
        if function not in (Function.HOLDING.code, Function.INPUT.code):
            return 1
        if count > self.model.max_registers:
            return ILLEGAL_VALUE
        last = address + count - 1
        if any(lo <= last and address <= hi for lo, hi in self.model.unreadable):
            return ILLEGAL_ADDRESS
        img = self.image(self.now())[function]
        words = [img.get(a) for a in range(address, address + count)]
        if all(w is None for w in words):
            return ILLEGAL_ADDRESS  # like most meters: a request that covers no register of theirs
        out = [0 if w is None else w for w in words]
        counters = [
            p
            for p in self.model.points
            if p.nature.value == "counter"
            and p.function.code == function
            and address <= p.address
            and p.end <= address + count
        ]
        if counters and self.zero_every:
            self._counter_reads += 1
            if self._counter_reads % self.zero_every == 0:
                for p in counters:
                    out[p.address - address : p.end - address] = [0] * p.registers
        return out


def _code(point: Point, state: float) -> int:
    """A vendor code of the model's table for a canonical state: the first that means it, else the
    code for standby, else the table's first code (a simulated meter never sends an unknown code)."""
    for wanted in (state, INVERTER_STATES["standby"]):
        code = next((vendor for vendor, canonical in point.states if canonical == wanted), None)
        if code is not None:
            return code
    return point.states[0][0]


def _fit(point: Point, raw: float) -> int | float:
    if point.type.is_float:
        return raw
    lo, hi = codec.type_range(point.type)
    r = math.floor(raw) if point.nature.value == "counter" else round(raw)
    return int(min(max(r, lo), hi))


def make_slave(
    model: Model,
    ids: list[int],
    *,
    serial: bool,
    baudrate: int | None = None,
    static: bool = False,
    turnaround: float = 0.0,
) -> tuple[Slave, dict[int, SimulatedMeter]]:
    meters = {i: SimulatedMeter(model, i, static=static) for i in ids}
    slave = Slave(dict(meters), baudrate=baudrate, silent_unknown=serial, turnaround=turnaround)
    return slave, meters


def parse_ids(text: str) -> list[int]:
    """``1-10``, ``1,3,5``, ``1-3,7`` -> unit ids; raises ValueError."""
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            ids.extend(range(int(a), int(b) + 1))
        elif part:
            ids.append(int(part))
    if not ids or any(not 1 <= i <= 247 for i in ids):
        raise ValueError(f"ids {text!r}: need unit ids within 1..247")
    return sorted(set(ids))


def parse_addresses(text: str, digits: int) -> list[str]:
    """``000000000001,000000000002`` -> DL/T 645 (12 digits) or CJ/T 188 (14 digits) addresses."""
    out = [a.strip() for a in text.split(",") if a.strip()]
    if not out or any(len(a) != digits or not a.isdigit() for a in out):
        raise ValueError(f"addresses {text!r}: need {digits}-digit meter addresses, comma-separated")
    return out


def dlt645_meter(
    model: Model,
    address: str,
    *,
    static: bool = False,
    overrides: dict[str, float] | None = None,
    absent: Sequence[str] = (),
) -> Callable[[int], bytes | None]:
    """A DL/T 645 meter's data: DI -> value bytes, from the same simulated building as Modbus meters;
    the identifiers of ``absent`` points get "no such data"."""

    sim = SimulatedMeter(model, int(address[-6:]), static=static)
    sim.overrides.update(overrides or {})
    by_di: dict[int, list[Point]] = {}
    for p in model.points:
        by_di.setdefault(p.address, []).append(p)

    def data(di: int) -> bytes | None:
        points = by_di.get(di)
        if not points or all(p.name in absent for p in points):
            return None
        values = sim.engineering(sim.now())
        block = bytearray()
        formats = [(p.dlt645, p) for p in points if p.dlt645 is not None]
        for fmt, point in sorted(formats, key=lambda x: x[0].offset):  # a data block: each value at its offset
            block.extend(bytes(max(0, fmt.offset - len(block))))  # a value the model does not read: 0
            block[fmt.offset :] = fmt.encode(values[point.name] / point.scale)
        return bytes(block)

    return data


def cjt188_meter(
    model: Model, address: str, *, static: bool = False, overrides: dict[str, float] | None = None
) -> Callable[[], tuple[float, float, str, int]]:
    sim = SimulatedMeter(model, int(address[-6:]), static=static)
    sim.overrides.update(overrides or {})

    def data() -> tuple[float, float, str, int]:
        t = sim.now()
        volume = sim.engineering(t)["volume"]
        settlement = sim.engineering(t - (t % (30 * 86400)))["volume"]  # at the start of the billing month
        clock = time.strftime("%Y%m%d%H%M%S", time.gmtime(t + 8 * 3600))  # meters keep Beijing time
        return volume, settlement, clock, 0

    return data


class SunSpecDevice:
    """A SunSpec inverter: "SunS", model 1, model 103 and model 160 with ``modules`` MPPT inputs.

    The register layout is built from the same pysunspec2 definitions the reader uses, with values
    from a simulated rooftop following daylight; unimplemented points hold their sentinel.
    """

    SF: ClassVar[dict[str, int]] = {
        "A_SF": -2,
        "V_SF": -1,
        "W_SF": 0,
        "Hz_SF": -2,
        "VA_SF": 0,
        "VAr_SF": 0,
        "PF_SF": -2,
        "WH_SF": 0,
        "DCA_SF": -2,
        "DCV_SF": -1,
        "DCW_SF": 0,
        "DCWH_SF": 0,
        "Tmp_SF": -1,
    }

    def __init__(
        self,
        unit: int,
        *,
        base: int = 40000,
        modules: int = 2,
        static: bool = False,
        overrides: Mapping[str, float] | None = None,
    ) -> None:
        from drivers.modbus import sunspec

        self.unit = unit
        self.base = base
        self.modules = modules
        self.building = Building(seed=zlib.crc32(f"sunspec/{unit}".encode()), kind="pv")
        self.static_at = time.time() if static else None
        self._cache: tuple[float, dict[int, int]] = (-1.0, {})
        #: model id -> SunSpec point -> raw register value held there (``--set W_SF=400``: a faulty
        #: inverter); a name both models have (DCW_SF) is held in both
        self.overrides: dict[int, dict[str, int]] = {103: {}, 160: {}}
        for name, value in (overrides or {}).items():
            owners = [m for m in (103, 160) if any(p["name"] == name for p in sunspec.definition(m)["points"])]
            if not owners or name in ("ID", "L"):
                raise ValueError(
                    f"--set {name}: a SunSpec inverter holds raw registers of model 103 or 160 "
                    "by their SunSpec name, e.g. W_SF=400 or St=7"
                )
            for m in owners:
                self.overrides[m][name] = round(value)

    def _block(
        self, model_id: int, values: Mapping[str, int | str], repeat: Sequence[Mapping[str, int | str]] | None = None
    ) -> list[int]:
        from drivers.modbus import sunspec

        group = sunspec.definition(model_id)
        words: list[int] = []
        groups: list[tuple[Any, Mapping[str, int | str]]] = [(group["points"], values)]
        if repeat is not None:
            groups += [(group["groups"][0]["points"], v) for v in repeat]
        for points, vals in groups:
            for p in points:
                size = int(p.get("size", 1))
                name, kind = p["name"], p["type"]
                if kind == "string":
                    text = str(vals.get(name, "")).encode()[: 2 * size].ljust(2 * size, b"\0")
                    words += [int.from_bytes(text[i : i + 2], "big") for i in range(0, 2 * size, 2)]
                    continue
                if name in vals:
                    v = int(vals[name]) & ((1 << (16 * size)) - 1)
                else:
                    sentinel = sunspec.TYPES.get(kind, (None, 0))[1]
                    v = 0 if kind == "pad" or sentinel is None else sentinel
                words += [(v >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]
        words[1] = len(words) - 2  # L
        return words

    def image(self, t: float) -> dict[int, int]:
        if self._cache[0] == t:
            return self._cache[1]
        b = self.building
        sun = b.daylight(t)
        kw = b.rated_kw * sun
        v = 230.0 + 2 * math.sin(t / 23.0)
        a = kw * 1000 / v / 3
        wh = b.energy(t) * 1000
        common: dict[str, int | str] = {
            "ID": 1,
            "Mn": "Demo Solar",
            "Md": "SIM-10K",
            "Vr": "1.0",
            "SN": f"SIM{self.unit:05d}",
            "DA": self.unit,
        }
        inv: dict[str, int | str] = {
            "ID": 103,
            **self.SF,
            "A": round(a * 3 * 100),
            "AphA": round(a * 100),
            "AphB": round(a * 100),
            "AphC": round(a * 100),
            "PhVphA": round(v * 10),
            "PhVphB": round(v * 10),
            "PhVphC": round(v * 10),
            "PPVphAB": round(v * 17.32),
            "PPVphBC": round(v * 17.32),
            "PPVphCA": round(v * 17.32),
            "W": round(kw * 1000),
            "Hz": round((50 + 0.02 * math.sin(t / 29)) * 100),
            "VA": round(kw * 1000),
            "VAr": 0,
            "PF": 10000 if sun else 0,
            "WH": round(wh),
            "DCA": round(kw * 1030 / 600 * 100),
            "DCV": 6000,
            "DCW": round(kw * 1030),
            "TmpCab": round((25 + 15 * sun) * 10),
            "St": 4 if sun else 2,
            "StVnd": 0,
            "Evt1": 0,
            "Evt2": 0,
        }
        mods: list[dict[str, int | str]] = [
            {
                "ID": i + 1,
                "IDStr": f"PV{i + 1}",
                "DCA": round(kw * 1030 / self.modules / 600 * 100),
                "DCV": 6000 + 100 * i,
                "DCW": round(kw * 1030 / self.modules),
                "DCWH": round(wh / self.modules),
                "DCSt": 4 if sun else 2,
                "DCEvt": 0,
            }
            for i in range(self.modules)
        ]
        mppt: dict[str, int | str] = {
            "ID": 160,
            **{k: self.SF[k] for k in ("DCA_SF", "DCV_SF", "DCW_SF", "DCWH_SF")},
            "Evt": 0,
            "N": self.modules,
        }
        inv.update(self.overrides[103])
        mppt.update(self.overrides[160])
        words = [0x5375, 0x6E53]
        words += self._block(1, common) + self._block(103, inv) + self._block(160, mppt, mods) + [0xFFFF, 0]
        img = {self.base + i: w for i, w in enumerate(words)}
        self._cache = (t, img)
        return img

    def read(self, function: int, address: int, count: int) -> list[int] | int:
        if function != 3:
            return 1
        img = self.image(self.static_at if self.static_at is not None else time.time())
        if address not in img and address + count - 1 not in img:
            return ILLEGAL_ADDRESS
        return [img.get(a, 0) for a in range(address, address + count)]


@dataclass
class Served:
    """A running simulator: the server, what it serves, and its request counters."""

    server: Any
    what: str
    counts: Callable[[], str]


def _check_absent(model: Model, absent: Sequence[str]) -> None:
    for name in absent:
        if not model.has(name):
            raise ValueError(f'--absent {name}: {model.name} has no point "{name}"')
        if model.protocol == "modbus" and not model.point(name).invalid:
            raise ValueError(f'--absent {name}: {model.name} declares no "not available" marker for it')
        if model.protocol not in ("modbus", "dlt645"):
            raise ValueError(
                "--absent: only Modbus and DL/T 645 models (sunspec-inverter: --set a point to its marker)"
            )


def make_server(
    model: Model,
    *,
    tcp: tuple[str, int] | None = None,
    rtu_over_tcp: tuple[str, int] | None = None,
    serial: str | None = None,
    ids: str = "1",
    baud: int = 9600,
    parity: str = "N",
    line_timing: bool = False,
    static: bool = False,
    overrides: dict[str, float] | None = None,
    zero_every: int = 0,
    absent: Sequence[str] = (),
    di_order: str = "little",
    turnaround: float = 0.0,
) -> Served:
    """A simulator server for any model: Modbus (TCP, RTU over TCP, serial), SunSpec, DL/T 645, CJ/T 188.

    ``absent``: points the meters do not have (DL/T 645: "no such data"; Modbus: the point's marker).
    ``turnaround``: seconds a Modbus meter waits before it answers (a real meter's response time).
    Raises ValueError for a combination that cannot be served (a DL/T 645 meter over TCP, bad ids).
    """
    _check_absent(model, absent)
    from collector.simulator.modbus import SerialServer, TcpServer

    if model.protocol in ("dlt645", "cjt188"):
        if serial is None:
            raise ValueError(f"{model.name} speaks {model.protocol}: serve it with --serial DEV")
        digits = 12 if model.protocol == "dlt645" else 14
        addresses = parse_addresses(ids if ids != "1" else "0" * (digits - 1) + "1", digits)
        if model.protocol == "dlt645":
            from collector.simulator.dlt645 import Dlt645Slave, serial_server

            dslave = Dlt645Slave(
                {a: dlt645_meter(model, a, static=static, overrides=overrides, absent=absent) for a in addresses},
                baudrate=baud if line_timing else None,
            )
            return Served(
                serial_server(dslave, serial, baud, parity),
                f"DL/T 645 meter(s) {', '.join(addresses)} on serial {serial} {baud} 8{parity}1",
                lambda: ", ".join(f"{a}: {n}" for a, n in sorted(dslave.requests.items())) or "none",
            )
        from collector.simulator.cjt188 import Cjt188Slave
        from collector.simulator.cjt188 import serial_server as cjt188_server

        cslave = Cjt188Slave(
            {a: cjt188_meter(model, a, static=static, overrides=overrides) for a in addresses}, order=di_order
        )
        return Served(
            cjt188_server(cslave, serial, baud, parity),
            f"CJ/T 188 meter(s) {', '.join(addresses)} on serial {serial} {baud} 8{parity}1",
            lambda: ", ".join(f"{a}: {n}" for a, n in sorted(cslave.requests.items())) or "none",
        )
    units = parse_ids(ids)
    on_serial = serial is not None or rtu_over_tcp is not None
    devices: dict[int, Any] = {}
    for u in units:
        if model.protocol == "sunspec":
            devices[u] = SunSpecDevice(u, static=static, overrides=overrides)
        else:
            sim = SimulatedMeter(model, u, static=static)
            sim.overrides.update(overrides or {})
            sim.zero_every = zero_every
            sim.absent = set(absent)
            devices[u] = sim
    slave = Slave(devices, baudrate=baud if line_timing else None, silent_unknown=on_serial, turnaround=turnaround)

    def counts() -> str:
        answered = ", ".join(f"unit {u}: {n}" for u, n in sorted(slave.requests.items())) or "none"
        return f"{answered}; unanswered (unknown unit): {slave.unanswered}"

    if serial is not None:
        return Served(
            SerialServer(slave, serial, baudrate=baud, parity=parity),
            f"{model.name} unit(s) {ids} on serial {serial} {baud} 8{parity}1",
            counts,
        )
    host, port = rtu_over_tcp or tcp or ("127.0.0.1", 5020)
    kind = "rtu-over-tcp" if rtu_over_tcp else "tcp"
    server = TcpServer(slave, host, port, rtu=rtu_over_tcp is not None)
    return Served(server, f"{model.name} unit(s) {ids} on {kind}", counts)
