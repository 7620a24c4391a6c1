"""Aligned slots, backoff, clock-sync detection, sd_notify over a real socket."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.daemon import clock, systemd
from collector.daemon.bus import Backoff
from collector.daemon.scheduler import AlignedTrigger


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def test_aligned_to_the_wall_clock() -> None:
    t = AlignedTrigger(60)
    assert t.get_next_fire_time(None, at("2026-11-27T08:00:00.412")) == at("2026-11-27T08:01:00")
    assert AlignedTrigger(900).get_next_fire_time(None, at("2026-11-27T08:07:00")) == at("2026-11-27T08:15:00")


def test_after_a_forward_step_the_next_fire_is_after_now_not_every_missed_slot() -> None:
    t = AlignedTrigger(1)
    previous = at("1970-01-01T00:00:05")
    now = at("2026-11-27T08:00:00.5")
    assert t.get_next_fire_time(previous, now) == at("2026-11-27T08:00:01")


def test_never_fires_twice_for_one_slot() -> None:
    t = AlignedTrigger(60)
    fired = at("2026-11-27T08:01:00")
    # Called a hair before the slot it has just fired (clock jitter): the next one is a slot later.
    assert t.get_next_fire_time(fired, fired - timedelta(milliseconds=2)) == at("2026-11-27T08:02:00")


def test_backoff_is_exponential_and_capped() -> None:
    b = Backoff(interval=60, cap=300)
    now = 1000.0
    b.fail(now)
    assert b.allows(now + 60)  # the next slot is still tried
    b.fail(now)
    assert not b.allows(now + 60) and b.allows(now + 120)
    for _ in range(10):
        b.fail(now)
    assert b.allows(now + 300) and not b.allows(now + 200)
    b.ok()
    assert b.allows(now)


def test_a_clock_before_the_build_is_never_synchronised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 86400.0 * 365)  # 1971: clock.synchronised reads time.time()
    assert not clock.synchronised("none")
    monkeypatch.undo()
    assert clock.synchronised("none")


def test_sd_notify_reaches_a_real_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1", "STATUS=polling 3 meters")
        assert s.recv(100) == b"READY=1\nSTATUS=polling 3 meters"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert systemd.watchdog_interval() == 10.0
