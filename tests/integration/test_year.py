"""Proof over a year: published interval deltas add up to the meter's true consumption to 0.01 kWh,
through a 32-bit wrap, a replacement, a 3-hour outage, glitches, a clock step and a SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.daemon.buffer import Buffer
from collector.daemon.payloads import Topics, message
from collector.daemon.records import KIND_INTERVAL, KIND_READING
from tests import year_sim
from tests.conftest import ROOT
from tests.schemas import validate


def run(db: Path, start: int, kill_at: int | None = None) -> int:
    args = [sys.executable, "-m", "tests.year_sim", str(db), str(start)]
    if kill_at is not None:
        args += ["--kill-at", str(kill_at)]
    return subprocess.run(args, cwd=ROOT, timeout=120).returncode


def test_a_year_adds_up(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    kill = 200 * 96 + 50  # 20 July, mid-batch
    assert run(db, 0, kill_at=kill) == -9  # SIGKILLed
    b = Buffer(db)
    ((_, _, state),) = b.ledger()
    b.close()
    last = round((state["last_t"] - year_sim.T0) / year_sim.STEP)
    assert last == 200 * 96 - 1  # the batch being gathered at the kill is lost, the one before is stored
    # The daemon comes back 40 minutes after the kill: the polls in between were never taken.
    assert run(db, kill + 2) == 0

    b = Buffer(db)
    assert b.integrity() == "ok"
    rows = list(b.rows())
    b.close()
    energy = year_sim.true_energy()
    readings = [r for r in rows if r.kind == KIND_READING]
    values = [r.values["energy_import"] for r in readings if r.values and "energy_import" in r.values]
    assert values == sorted(values), "a published counter never decreases"
    glitched = [r for r in readings if r.extra and "held back" in str(r.extra.get("errors"))]
    assert len(glitched) >= 30  # every 997th poll read 0: marked, not published

    intervals = [r.extra for r in rows if r.kind == KIND_INTERVAL and r.extra]
    assert all(iv["delta"] >= 0 for iv in intervals), "no negative consumption is ever published"
    qualities = {iv["quality"] for iv in intervals}
    assert qualities == {"measured", "estimated", "outage"}
    total = sum(iv["delta"] for iv in intervals)
    first, last_end = intervals[0]["start"], intervals[-1]["end"]
    first_poll = round((first - year_sim.T0) / year_sim.STEP)
    last_poll = round((last_end - year_sim.T0) / year_sim.STEP)
    assert (first_poll, last_poll) == (0, year_sim.POLLS)
    assert total == pytest.approx(energy[last_poll] - energy[first_poll], abs=0.01)
    # The intervals tile the year without overlap (the clock step's hour is folded into its neighbours).
    ends = [iv["end"] for iv in intervals]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)

    topics = Topics("meters", "gw")
    sample = [r for r in rows if r.kind == KIND_INTERVAL][:3]
    for r in sample:
        topic, payload = message(r, "gw", topics)
        assert topic == "meters/gw/meters/office/interval"
        assert validate(topic, json.loads(payload)) == "interval"
    causes = [r.extra["cause"] for r in rows if r.extra and r.extra.get("event") == "counter_reset"]
    assert causes == ["rollover", "replacement"]
