"""A year of one meter on an accelerated clock, through the real ledger and the real SQLite buffer.

Run by tests/integration/test_year.py as its own process (so it can be SIGKILLed):

    python -m tests.year_sim DB START_POLL [--kill-at POLL]

The meter: an office building drawing a known power profile, read every 15 minutes; its energy
register is a uint32 in Wh (wraps at 4,294,967.296 kWh, which happens in April); it reads 0 once
every 997 polls (a glitch); it is silent for 3 hours in May; it is replaced on 1 September
(recorded in the config); on 1 November the gateway clock steps forward an hour, and back 6 hours
later. Every 96 polls are stored in one transaction, as the daemon stores a batch.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from collector.config import Calibration, Meter, PointCalibration, Replacement
from collector.daemon.buffer import Buffer
from collector.daemon.calibration import Reading
from collector.daemon.counters import Ledger
from collector.daemon.records import Event, Interval, Record
from drivers.model import DataType, Function, Model, Point
from drivers.quantities import Nature, Ratio

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
STEP = 900.0
POLLS = 365 * 96
START_REGISTER_KWH = 4_200_000.0
WRAP = 2**32 / 1000.0
SWAP_POLL = (31 + 28 + 31 + 30 + 31 + 30 + 31 + 31) * 96  # 1 September 00:00
NEW_METER_START = 12.5
OUTAGE = range(135 * 96 + 40, 135 * 96 + 52)  # 3 hours on 16 May
CLOCK_FORWARD = range(304 * 96, 304 * 96 + 24)  # 1 November: +1 h for 6 hours
GLITCH_EVERY = 997


def power_kw(i: int) -> float:
    """The building's mean power in poll interval i (a weekday office, smaller at weekends)."""
    hour = (i % 96) / 4.0
    day = (i // 96) % 7
    working = max(0.0, math.sin(math.pi * (hour - 7.0) / 12.0)) * (1.0 if day < 5 else 0.3)
    return 12.0 + 60.0 * working + 5.0 * math.sin(i / 37.0)


def true_energy() -> list[float]:
    """Cumulative true consumption (kWh) at the start of each poll."""
    out, e = [0.0], 0.0
    for i in range(POLLS):
        e += power_kw(i) * STEP / 3600.0
        out.append(e)
    return out


def register(i: int, energy: list[float]) -> float | None:
    """What the meter's register shows at poll i (kWh), or None when it does not answer."""
    if i in OUTAGE:
        return None
    if i % GLITCH_EVERY == GLITCH_EVERY - 1:
        return 0.0
    if i < SWAP_POLL:
        return round((START_REGISTER_KWH + energy[i]) % WRAP, 3)
    return round(NEW_METER_START + energy[i] - energy[SWAP_POLL], 3)


def meter(energy: list[float]) -> Meter:
    point = Point(
        "energy_import",
        0,
        DataType.UINT32,
        Function.HOLDING,
        scale=0.001,
        unit="kWh",
        meter_unit="Wh",
        nature=Nature.COUNTER,
        ratio=Ratio.CT_PT,
    )
    model = Model("sim-office", "Sim", "Office", "electricity", "modbus", "simulated", (point,))
    old_final = round((START_REGISTER_KWH + energy[SWAP_POLL]) % WRAP, 3)
    swap = Replacement(T0 + SWAP_POLL * STEP, "energy_import", old_final, NEW_METER_START)
    cal = Calibration(points={"energy_import": PointCalibration(max_rate=400.0)})
    return Meter("office", "bus", 1, model, model.name, interval=STEP, calibration=cal, replacements=(swap,))


def slot_of(i: int) -> float:
    return T0 + i * STEP + (3600.0 if i in CLOCK_FORWARD else 0.0)


def main() -> None:
    db, start = Path(sys.argv[1]), int(sys.argv[2])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--kill-at" else -1
    energy = true_energy()
    m = meter(energy)
    buf = Buffer(db, max_age=3650 * 86400, max_size=10**10)
    ledger = Ledger.load(buf.ledger(), interval=STEP)
    records: list[Record] = []
    intervals: list[Interval] = []
    events: list[Event] = []
    dirty: dict[tuple[str, str], dict[str, object]] = {}
    for i in range(start, POLLS + 1):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-batch: what was not committed is lost
        value = register(i, energy)
        t = datetime.fromtimestamp(slot_of(i), UTC)
        reading = Reading(
            "office",
            t,
            t,
            values={} if value is None else {"energy_import": value},
            quality="bad" if value is None else "good",
        )
        out = ledger.process(m, reading)
        records.append(Record("office", t, t, reading.values, reading.quality, reading.errors))
        intervals += out.intervals
        events += out.events
        dirty.update({k: Ledger.dump(s) for k, s in out.state.items()})
        if i % 96 == 95 or i == POLLS:
            buf.append(records, events, intervals, dirty)
            records, intervals, events, dirty = [], [], [], {}
    buf.close()


if __name__ == "__main__":
    main()
