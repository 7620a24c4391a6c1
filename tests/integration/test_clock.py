"""Wall-clock steps, as NTP makes them on a Pi without an RTC, played with libfaketime on the real
daemon: the wall clock jumps while the monotonic clock does not."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import Simulator, free_port
from tests.integration.daemon_parts import DaemonProcess, site_config
from tests.mqtt_parts import Mosquitto, Subscriber

LIBFAKETIME = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1"),
]


def libfaketime() -> Path:
    for p in LIBFAKETIME:
        if p.exists():
            return p
    if os.environ.get("CI"):
        pytest.fail("libfaketime is not installed; the test command must install it (apt-get install faketime)")
    pytest.skip("libfaketime is not installed (apt-get install faketime)")


def slot_ts(r: dict) -> float:  # type: ignore[type-arg]
    return datetime.fromisoformat(r["slot"].replace("Z", "+00:00")).timestamp()


def test_clock_steps_forward_and_back_without_a_burst_or_a_silent_gap(
    tmp_path: Path, simulator: type[Simulator]
) -> None:
    lib = libfaketime()
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sim = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim}", "--ids", "1")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        **os.environ,
        "LD_PRELOAD": str(lib),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=1)
    d = DaemonProcess(config, tmp_path / "daemon.log", env=env)
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 3, 20, "readings before the step")
        offset.write_text("+3600\n")  # NTP steps the clock forward by an hour
        step_at = time.time()  # this process's clock is not faked
        sub.wait_for(lambda: any(e["event"] == "clock_stepped" for e in sub.json("/events")), 10, "the step event")

        def after_forward() -> list[dict]:  # type: ignore[type-arg]
            return [r for r in sub.json("/reading") if slot_ts(r) > step_at + 3000]

        sub.wait_for(lambda: len(after_forward()) >= 3, 15, "3 readings after the forward step")
        n = len(after_forward())
        elapsed = time.time() - step_at
        # No burst: an hour of missed 1 s slots is not polled after the fact. At most one reading per
        # real second since the step (and one in flight), and none from inside the skipped hour.
        assert n <= elapsed + 2, f"{n} readings in {elapsed:.1f} s after the step"
        skipped = [r["slot"] for r in sub.json("/reading") if step_at + 5 < slot_ts(r) < step_at + 3600 - 5]
        assert not skipped, f"slots of the skipped hour were polled: {skipped[:5]}"
        offset.write_text("-600\n")  # and back, 70 minutes
        back_at = time.time()
        sub.wait_for(
            lambda: sum(e["event"] == "clock_stepped" for e in sub.json("/events")) >= 2, 10, "the backward step event"
        )
        # No silent gap: polling goes on at once on the new (earlier) time.
        sub.wait_for(
            lambda: len([r for r in sub.json("/reading") if back_at - 700 < slot_ts(r) < back_at]) >= 2,
            15,  # "at once" against the 70 minutes a daemon waiting for its old time would be silent
            "readings after the backward step",
        )
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
        broker.stop()
    steps = [e for e in sub.json("/events") if e["event"] == "clock_stepped"]
    assert steps[0]["delta_s"] == pytest.approx(3600, abs=3) and steps[0]["slots_skipped"] is True
    assert steps[1]["delta_s"] == pytest.approx(-4200, abs=3)
    assert "wall clock stepped forward by 36" in d.log()
