"""Energy data a platform can bill on: counter integrity, meter replacement, interval consumption.

For every point of nature ``counter`` (energy, volume), after calibration:

* **Replacement** (from the config): after a recorded swap, the old meter's final reading minus the
  new meter's first reading is added, so the published total continues.
* **Rollover**: the value falls from near the register's maximum to near zero: the register's
  modulus is added (a 32-bit Wh counter wraps at 4,294,967.296 kWh).
* **Glitch**: any other fall, or a rise faster than the point's ``max_rate``, is held back for that
  poll (the point gets an error, never a number). If the next poll is back in line, it was a glitch.
* **Reset**: if the next poll confirms the new level, the meter was reset or swapped without a
  record: continuity is kept (the difference is carried as an offset) and an event says so.

A published counter therefore never decreases. From the published values, the consumption of each
wall-clock interval (15 min by default) is computed from the values at the interval boundaries:
``measured`` when a poll fell on the boundary, ``estimated`` (linear between the polls around it)
when not (the polls around it at most two intervals apart: one missed poll), and ``outage`` for one
record spanning several intervals when the polls around a boundary are further apart than that: a
meter outage is never spread silently.
The state lives in the buffer's SQLite file, written in the same transaction as the readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from collector.config import Meter
from collector.daemon.calibration import Reading, ratio_factor
from collector.daemon.records import Event, Interval
from drivers.model import Point
from drivers.quantities import Nature

MEASURED, ESTIMATED, OUTAGE = "measured", "estimated", "outage"


@dataclass(slots=True)
class PointState:
    """What is remembered about one counter of one meter (JSON in the ledger table)."""

    last_c: float | None = None  #: last accepted calibrated value (as the meter counts, after CT/PT)
    last_r: float | None = None  #: ... with replacement offsets
    last_t: float = 0.0  #: its slot, unix seconds
    auto_offset: float = 0.0  #: rollovers and detected resets
    suspect_r: float | None = None  #: a fall held back, waiting for the next poll
    suspect_c: float | None = None
    suspect_t: float = 0.0
    resets: list[tuple[float, float]] = field(default_factory=list)  #: (slot, amount) of detected resets
    replacements_applied: int = 0
    glitches: int = 0
    # interval consumption
    prev_t: float | None = None  #: last sample (slot, published value)
    prev_p: float = 0.0
    b_t: float | None = None  #: last valued boundary
    b_p: float = 0.0
    b_q: str = MEASURED


_STATE_FIELDS = tuple(f.name for f in fields(PointState))


def modulus(meter: Meter, point: Point) -> float | None:
    """The calibrated value at which the register wraps, or None for a float register (no wrap)."""
    span = point.span
    if span is None:
        return None
    pc = meter.calibration.points.get(point.name)
    factor = ratio_factor(point.ratio, meter.calibration.ct_ratio, meter.calibration.pt_ratio)
    return span * factor * (pc.scale if pc else 1.0)


def replacement_offset(meter: Meter, point: Point, t: float) -> tuple[float, int]:
    """The offset from the replacements recorded up to slot ``t``, and how many there are."""
    if not meter.replacements:
        return 0.0, 0  # most meters: checked on every reading of every counter
    pc = meter.calibration.points.get(point.name)
    factor = ratio_factor(point.ratio, meter.calibration.ct_ratio, meter.calibration.pt_ratio)
    factor *= pc.scale if pc else 1.0
    applied = [r for r in meter.replacements if r.point == point.name and r.at <= t]
    return sum((r.old_final - r.new_first) * factor for r in applied), len(applied)


@dataclass
class Outcome:
    """What the ledger made of one reading."""

    intervals: list[Interval] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    state: dict[tuple[str, str], PointState] = field(default_factory=dict)  #: changed states to store


class Ledger:
    def __init__(self, interval: float = 900.0, states: dict[tuple[str, str], PointState] | None = None) -> None:
        self.interval = interval
        self.states: dict[tuple[str, str], PointState] = states or {}
        self._errors: dict[str, str] = {}  # errors of the reading being processed

    @staticmethod
    def load(rows: list[tuple[str, str, dict[str, Any]]], interval: float = 900.0) -> Ledger:
        states = {}
        for meter, point, data in rows:
            data["resets"] = [tuple(x) for x in data.get("resets", [])]
            states[(meter, point)] = PointState(**data)
        return Ledger(interval, states)

    @staticmethod
    def dump(state: PointState) -> dict[str, Any]:
        """The state as stored (JSON). By hand, not dataclasses.asdict: the writer dumps every counter
        of every batch, and asdict's recursion was a fifth of the daemon's CPU at 1 s polling."""
        out = {f: getattr(state, f) for f in _STATE_FIELDS}
        out["resets"] = [list(r) for r in state.resets]
        return out

    def process(self, meter: Meter, reading: Reading) -> Outcome:
        """Check the counters of a reading in place (values, errors, quality) and derive intervals."""
        out = Outcome()
        model = reading.model or meter.model
        t = reading.slot.timestamp()
        counters = model.derived("counters", lambda: {p.name: p for p in model.points if p.nature is Nature.COUNTER})
        for name in [n for n in reading.values if n in counters]:
            point = counters[name]
            key = (meter.id, name)
            st = self.states.setdefault(key, PointState())
            published = self._counter(meter, point, st, reading.values[name], t, out)
            out.state[key] = st
            if published is None:
                reading.values.pop(name)
                continue
            reading.values[name] = published
            out.intervals += self._intervals(meter, point, st, t, published)
        for name, why in self._errors.items():
            reading.errors[name] = why
        self._errors = {}
        if reading.quality == "good" and reading.errors:
            reading.quality = "partial"
        if not reading.values and reading.quality != "bad":
            reading.quality = "bad"
        return out

    def _counter(self, meter: Meter, point: Point, st: PointState, c: float, t: float, out: Outcome) -> float | None:
        offset, applied = replacement_offset(meter, point, t)
        if applied > st.replacements_applied:
            # A swap recorded after the daemon had already bridged it as a detected reset: the record
            # replaces the guess (within a day of the recorded time), so nothing is counted twice.
            recorded = [r.at for r in meter.replacements if r.point == point.name and r.at <= t]
            for at in recorded[st.replacements_applied :]:
                for reset in [x for x in st.resets if at <= x[0] <= at + 86400]:
                    st.auto_offset -= reset[1]
                    st.resets.remove(reset)
                    if st.last_r is not None:
                        st.last_r += reset[1]
            out.events.append(
                Event(
                    "counter_reset",
                    meter.id,
                    {
                        "point": point.name,
                        "cause": "replacement",
                        "offset": round(offset, 6),
                    },
                )
            )
            st.replacements_applied = applied
        r = c + offset
        pc = meter.calibration.points.get(point.name)
        max_rate = pc.max_rate if pc else None
        if st.last_r is None or st.last_c is None:
            return self._accept(st, c, r, t)
        if t <= st.last_t:
            # The clock stepped back: the same or an earlier slot again. Publish what we have.
            return _tidy(st.last_r + st.auto_offset) if r <= st.last_r else self._accept(st, c, r, t)
        dt_h = (t - st.last_t) / 3600.0
        rise = r - st.last_r
        tiny = 1e-9 * max(1.0, abs(st.last_r))
        if rise >= -tiny:
            if max_rate is not None and rise > max_rate * dt_h + tiny:
                return self._hold(
                    meter,
                    point,
                    st,
                    c,
                    r,
                    t,
                    out,
                    f"rose by {rise:.6g} {point.unit} in {t - st.last_t:.0f} s, faster than "
                    f"max_rate {max_rate:g} {point.unit}/h",
                )
            return self._accept(st, c, max(r, st.last_r), t)
        m = modulus(meter, point)
        # A wrap: from near the top to near zero, and the rise through the wrap is believable (a 0 read
        # just below the top is a glitch, not a wrap: the rise would be a whole remaining register).
        limit = max_rate * dt_h if max_rate is not None else 0.01 * (m or 0.0)
        if m is not None and st.last_c >= 0.9 * m and c <= 0.1 * m and c + m - st.last_c <= limit:
            st.auto_offset += m
            out.events.append(
                Event(
                    "counter_reset",
                    meter.id,
                    {
                        "point": point.name,
                        "cause": "rollover",
                        "from": st.last_c,
                        "to": c,
                        "offset": round(st.auto_offset, 6),
                    },
                )
            )
            return self._accept(st, c, r, t)
        return self._hold(
            meter,
            point,
            st,
            c,
            r,
            t,
            out,
            f"fell from {st.last_c:.10g} to {c:.10g} {point.unit}: held back (glitch or reset?)",
        )

    def _hold(
        self, meter: Meter, point: Point, st: PointState, c: float, r: float, t: float, out: Outcome, why: str
    ) -> float | None:
        """A value out of line: the first time, held back; confirmed by the next poll, a reset."""
        if (
            st.suspect_r is not None
            and st.last_r is not None
            and t > st.suspect_t
            and abs(r - st.suspect_r) <= abs(st.last_r - st.suspect_r) / 2
        ):
            # The next poll stays at the new level: the meter was reset (or swapped unrecorded).
            amount = st.last_r - st.suspect_r
            st.auto_offset += amount
            st.resets.append((t, amount))
            out.events.append(
                Event(
                    "counter_reset",
                    meter.id,
                    {
                        "point": point.name,
                        "cause": "reset",
                        "from": st.last_c,
                        "to": st.suspect_c,
                        "offset": round(st.auto_offset, 6),
                    },
                )
            )
            return self._accept(st, c, r, t)
        st.suspect_r, st.suspect_c, st.suspect_t = r, c, t
        st.glitches += 1
        self._errors[point.name] = why
        return None

    @staticmethod
    def _accept(st: PointState, c: float, r: float, t: float) -> float:
        st.last_c, st.last_r, st.last_t = c, r, t
        st.suspect_r = st.suspect_c = None
        return _tidy(r + st.auto_offset)

    def _intervals(self, meter: Meter, point: Point, st: PointState, t: float, p: float) -> list[Interval]:
        size = self.interval
        if st.prev_t is None:
            st.prev_t, st.prev_p = t, p
            if t % size == 0:
                st.b_t, st.b_p, st.b_q = t, p, MEASURED
            return []
        if t <= st.prev_t:
            return []  # a clock stepped back: the boundaries up to prev_t are done
        out: list[Interval] = []
        gap = t - st.prev_t
        first = math.floor(st.prev_t / size) * size + size
        boundary = first
        while boundary <= t:
            if boundary == t:
                value, quality = p, MEASURED
            elif gap <= 2 * size:  # one missed poll at most: interpolate
                value = st.prev_p + (p - st.prev_p) * (boundary - st.prev_t) / gap
                quality = ESTIMATED
            else:
                boundary += size
                continue  # inside an outage: no value for this boundary
            if st.b_t is not None:
                q = MEASURED if (st.b_q == MEASURED and quality == MEASURED) else ESTIMATED
                if boundary - st.b_t > size:
                    q = OUTAGE
                out.append(
                    Interval(meter.id, point.name, st.b_t, boundary, _tidy(max(0.0, value - st.b_p)), point.unit, q)
                )
            st.b_t, st.b_p, st.b_q = boundary, value, quality
            boundary += size
        st.prev_t, st.prev_p = t, p
        return out


def _tidy(v: float) -> float:
    return float(f"{v:.12g}")
