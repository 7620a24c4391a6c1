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
from dataclasses import dataclass, field

from drivers.modbus import codec
from drivers.modbus.server import ILLEGAL_ADDRESS, ILLEGAL_VALUE, Slave
from drivers.model import Function, Model, Point

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
        self._images: dict[int, dict[int, int]] = {}
        self._image_time = -1.0

    def now(self) -> float:
        return self.static_at if self.static_at is not None else time.time()

    def engineering(self, t: float) -> dict[str, float]:
        """Every point's value in canonical units, as the meter would publish it."""
        world = self.building.values(t)
        out = {}
        for p in self.model.points:
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
                raws[p.name] = values[p.name] / p.scale
        for p in self.model.points:
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
        return [img.get(a, 0) for a in range(address, address + count)]


def _fit(point: Point, raw: float) -> int | float:
    if point.type.is_float:
        return raw
    lo, hi = codec.type_range(point.type)
    r = math.floor(raw) if point.nature.value == "counter" else round(raw)
    return int(min(max(r, lo), hi))


def make_slave(
    model: Model, ids: list[int], *, serial: bool, baudrate: int | None = None, static: bool = False
) -> tuple[Slave, dict[int, SimulatedMeter]]:
    meters = {i: SimulatedMeter(model, i, static=static) for i in ids}
    slave = Slave(dict(meters), baudrate=baudrate, silent_unknown=serial)
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
