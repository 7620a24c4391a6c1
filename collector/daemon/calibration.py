"""Site calibration: CT/PT ratios, per-point scale and offset -> a Reading.

A meter on a current transformer measures the secondary side: 200/5 A CTs make a 40 × smaller
current, power and energy. The ratio applies to the quantities it scales (drivers.quantities.Ratio):
currents × CT, voltages × PT, powers and energies × CT × PT; frequency and power factor never.
Then a point's own ``scale`` and ``offset`` (continuity after a meter replacement, a known error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from collector.config import Meter, PointCalibration
from drivers.model import Model
from drivers.quantities import Ratio
from drivers.reading import DeviceRead, tidy

GOOD, PARTIAL, BAD = "good", "partial", "bad"


@dataclass(slots=True)
class Reading:
    """One meter read at one slot, calibrated, ready for the buffer."""

    meter: str
    slot: datetime  #: the wall-clock slot the poll belongs to
    ts: datetime  #: when the values were read
    model: Model | None = None  #: the model the values follow (discovered, for SunSpec)
    values: dict[str, float] = field(default_factory=dict)  #: calibrated, canonical units
    meter_values: dict[str, float] = field(default_factory=dict)  #: as the meter reports, canonical units
    raw: dict[str, int | float] = field(default_factory=dict)  #: register contents decoded, unscaled
    registers: dict[str, list[int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  #: point -> the fault that left it without a value
    absent: dict[str, str] = field(default_factory=dict)  #: point -> why the meter has none, by design
    quality: str = GOOD  #: partial: some point has an error; absent points do not count
    requests: int = 0
    seconds: float = 0.0
    failure: str | None = None  #: the meter did not answer at all: why


def ratio_factor(ratio: Ratio, ct: float, pt: float) -> float:
    if ratio is Ratio.CT:
        return ct
    if ratio is Ratio.PT:
        return pt
    if ratio is Ratio.CT_PT:
        return ct * pt
    return 1.0


Table = dict[str, tuple[float, PointCalibration | None] | None]

#: (meter, model) -> per point: None (never published) or (factor, point calibration), and the points
#: published as the meter reports them; the config is immutable, so this is worked out once per meter
#: and model (SunSpec: per discovered model)
_TABLES: dict[tuple[int, int], tuple[Meter, Model, Table, frozenset[str]]] = {}
#: one copy of each distinct table: the meters of one model and calibration share it (200 alike: 1.5 MB)
_SHARED: dict[tuple[object, ...], tuple[Table, frozenset[str]]] = {}


def _table(meter: Meter, model: Model) -> tuple[Table, frozenset[str]]:
    key = (id(meter), id(model))
    entry = _TABLES.get(key)
    if entry is None or entry[0] is not meter or entry[1] is not model:
        cal = meter.calibration
        table: Table = {}
        for point in model.points:
            if point.publish:
                table[point.name] = (ratio_factor(point.ratio, cal.ct_ratio, cal.pt_ratio), cal.points.get(point.name))
            else:
                table[point.name] = None  # a helper or a setting shown by `read --raw`: never published
        plain = frozenset(name for name, how in table.items() if how is not None and how == (1.0, None))
        if len(_TABLES) > 4096:  # reloads replace meters: forget the old ones
            _TABLES.clear()
            _SHARED.clear()
        table, plain = _SHARED.setdefault((id(model), *table.items()), (table, plain))
        entry = _TABLES[key] = (meter, model, table, plain)
    return entry[2], entry[3]


def _calibrated(read: dict[str, float], table: Table) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, value in read.items():
        how = table.get(name)
        if how is None:
            continue
        factor, pc = how
        if pc is None and factor == 1.0:
            values[name] = float(value)  # tidy already (drivers): nothing here adds binary noise
            continue
        v = value * factor
        if pc is not None:
            v = v * pc.scale + pc.offset
        values[name] = tidy(v)
    return values


def calibrate(meter: Meter, read: DeviceRead, slot: datetime, ts: datetime) -> Reading:
    """The Reading of a DeviceRead, which it takes over (its dicts are not copied)."""
    model = read.model or meter.model
    table, plain = _table(meter, model)
    # Published as the meter reports them (the common case: no ratio, no correction): no loop.
    values = dict(read.values) if read.values.keys() <= plain else _calibrated(read.values, table)
    if read.failure is not None or not values:
        quality = BAD
    elif read.errors:
        quality = PARTIAL
    else:
        quality = GOOD
    return Reading(
        meter=meter.id,
        slot=slot,
        ts=ts,
        model=model,
        values=values,
        meter_values=read.values,
        raw=read.raw,
        registers=read.registers,
        errors=read.errors,
        absent={n: why for n, why in read.absent.items() if model.has(n) and model.point(n).publish},
        quality=quality,
        requests=read.requests,
        seconds=read.seconds,
        failure=str(read.failure) if read.failure is not None else None,
    )
