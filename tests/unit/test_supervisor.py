"""The supervisor restarts a loop that fails and reports one that keeps failing; the writer keeps
what it cannot store in a bounded queue and says what it had to drop, against a SQLite file that
really refuses to grow (max_page_count)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from collector.config import load_config
from collector.daemon import supervisor
from collector.daemon.buffer import AsyncBuffer, Buffer
from collector.daemon.counters import Ledger
from collector.daemon.records import Event, Row
from collector.daemon.supervisor import Supervisor
from collector.daemon.writer import Writer


async def until(predicate: object, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_stop_cancels_again_a_loop_that_lost_its_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "CANCEL_AGAIN", 0.05)
    cancels: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) > 1:
                    raise
                # as asyncio.wait_for does when its future completes with the cancel (CPython gh-86296)

    async def main() -> None:
        sup = Supervisor()
        sup.start("stubborn", stubborn)
        await asyncio.sleep(0.01)
        await asyncio.wait_for(sup.stop(), 5)

    asyncio.run(main())
    assert len(cancels) == 2


def test_a_failing_loop_is_restarted_logged_once_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_FIRST", 0.01)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) <= 4:
            raise OSError("the same cause")
        await asyncio.Event().wait()  # then runs for good

    async def go() -> Supervisor:
        sup = Supervisor()
        sup.start("flaky", flaky)
        await until(lambda: len(runs) >= 4, 10, "four failures")
        assert sup.failing() == ["flaky"] and sup.alive()
        await until(lambda: len(runs) == 5, 10, "the fifth run")
        await sup.stop()
        return sup

    with caplog.at_level(logging.ERROR, logger="collector.daemon.supervisor"):
        sup = asyncio.run(go())
    assert sup.states["flaky"].restarts == 4
    assert sup.payload() == {"flaky": {"restarts": 4, "last_error": "OSError: the same cause"}}
    failed = [r for r in caplog.records if "task flaky failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # once, with its traceback


def test_the_writer_keeps_what_it_cannot_store_and_names_what_it_dropped(tmp_path: Path) -> None:
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(
        f"gateway: {{id: gw}}\nstorage: {{path: {tmp_path / 'b.db'}}}\n"
        "buses: [{name: lan, type: tcp, host: 127.0.0.1}]\n"
        "meters: [{id: m1, bus: lan, address: 1, model: eastron-sdm120}]\n"
    )
    config = load_config(cfg_path)
    offered: list[Row] = []

    async def go() -> list[Row]:
        store = Buffer(tmp_path / "b.db", max_age=86400, max_size=10**9)
        buf, conn = AsyncBuffer(store), store.conn
        writer = Writer(buf, offered.extend, "none", config, Ledger(), queue_max=5)
        conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
        task = asyncio.create_task(writer.run())
        for i in range(20):
            writer.event(Event("test", None, {"i": i, "pad": "x" * 5000}))  # needs new pages
        await until(lambda: writer.failing_since is not None, 10, "the write to fail")
        assert len(writer.queue) == 5  # bounded; the oldest went
        conn.execute("PRAGMA max_page_count=1000000")  # space is back
        await until(lambda: writer.failing_since is None and not writer.waiting, 30, "the queue to be stored")
        task.cancel()
        rows = await buf.rows()
        await buf.close()
        return rows

    rows = asyncio.run(go())
    kept = [r.extra["i"] for r in rows if r.extra and r.extra["event"] == "test"]
    assert kept == [15, 16, 17, 18, 19]
    lost = [r.extra for r in rows if r.extra and r.extra["event"] == "readings_not_stored"]
    assert lost == [{"event": "readings_not_stored", "count": 15, "meters": {}}]
    assert [r.seq for r in rows] == list(range(1, 7))  # no seq was lost to the failed attempts
    assert [r.seq for r in offered] == [r.seq for r in rows]
