"""The SQLite outbox: seq across restarts, compact rows, retention that reports what it drops."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.daemon.buffer import DATACENTER, MQTT, Buffer, CorruptBuffer, _salvage
from collector.daemon.records import KIND_EVENT, Event, Record

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def rec(meter: str = "m1", age: timedelta = timedelta(0), n: int = 3) -> Record:
    return Record(meter, NOW - age, NOW - age, {f"p{i}": 1000.5 + i for i in range(n)})


def test_seq_is_gap_free_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path)
    rows = b.append([rec(), rec("m2")], [Event("x")])
    assert [r.seq for r in rows] == [1, 2, 3]
    b.delete([1, 2, 3])
    b.close()
    b = Buffer(path)
    assert [r.seq for r in b.append([rec()])] == [4]  # never reused, even with an empty outbox


def test_rows_round_trip(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db")
    r = Record(
        "m1",
        NOW,
        NOW + timedelta(milliseconds=412),
        {"energy_import": 15321.07, "active_power": -1.5},
        "partial",
        {"frequency": "no reply"},
        synced=False,
    )
    b.append([r])
    row = b.fetch(0, 10)[0]
    assert row.meter == "m1" and row.slot == int(NOW.timestamp()) and row.ts_ms % 1000 == 412
    assert row.values == {"energy_import": 15321.07, "active_power": -1.5}
    assert row.extra == {"errors": {"frequency": "no reply"}, "clock": "unsynced"}


def test_the_file_is_wal_full_sync_and_readable_with_sqlite3(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db")
    b.append([rec()])
    assert b.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert b.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert b.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    other = sqlite3.connect(tmp_path / "b.db")
    assert other.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1


def test_a_value_costs_about_nine_bytes(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db")
    for _ in range(10):
        b.append([rec(f"m{i}", n=30) for i in range(200)])
    b.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL counts toward used_bytes
    assert b.used_bytes() / (2000 * 30) <= 12


def test_retention_by_age_drops_the_oldest_and_reports_it(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", max_age=3600)
    b.append([rec(age=timedelta(hours=2)) for _ in range(50)] + [rec() for _ in range(5)])
    events = b.enforce_retention(now=NOW.timestamp())
    assert len(events) == 1 and events[0].kind == KIND_EVENT
    assert events[0].extra == {
        "event": "data_dropped",
        "reason": "max_age",
        "count": 50,
        "first_seq": 1,
        "last_seq": 50,
        "ranges": [[1, 50]],
        "dropped_total": 50,
        "limit": 3600,
    }
    assert b.depth() == 6  # 5 readings and the event itself, which goes out like any message


def on_disk(db: Path) -> int:
    return sum(os.path.getsize(f"{db}{s}") for s in ("", "-wal") if os.path.exists(f"{db}{s}"))


def test_retention_by_size_shrinks_the_file(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", max_size=300_000)
    for _ in range(20):
        b.append([rec(f"m{i}", n=30) for i in range(200)])
    before = on_disk(tmp_path / "b.db")
    events = b.enforce_retention(now=NOW.timestamp())
    assert events and events[-1].extra and events[-1].extra["reason"] == "max_size"
    assert b.used_bytes() <= 300_000
    assert on_disk(tmp_path / "b.db") < before / 2  # pages returned to the file system
    assert b.integrity() == "ok"
    # The newest rows are the ones kept.
    assert b.fetch(0, 1)[0].seq > events[-1].extra["first_seq"]


def test_a_commit_survives_sigkill(tmp_path: Path) -> None:
    script = (
        "import os, sys, signal\n"
        "from datetime import UTC, datetime\n"
        "from collector.daemon.buffer import Buffer, Record\n"
        f"b = Buffer({str(tmp_path / 'k.db')!r})\n"
        "now = datetime.now(UTC)\n"
        "b.append([Record('m', now, now, {'x': 1.0}) for _ in range(100)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False)
    b = Buffer(tmp_path / "k.db")
    assert b.depth() == 100 and b.integrity() == "ok" and b.next_seq == 101


def test_every_dropped_seq_stays_named_through_a_long_outage(tmp_path: Path) -> None:
    """Retention passes one after another, drop reports never dropped: whatever the platform will
    never receive is named by a report that is still in the buffer, and there is one report."""
    b = Buffer(tmp_path / "b.db", max_size=1_000_000)
    for _ in range(30):
        b.append([rec(f"m{i}", n=30) for i in range(200)])
        b.enforce_retention(now=NOW.timestamp())
    assert b.used_bytes() <= 1_000_000
    rows = list(b.rows())
    reports = [r for r in rows if r.extra and r.extra.get("event") == "data_dropped"]
    assert len(reports) == 1
    named = {s for a, z in reports[0].extra["ranges"] for s in range(a, z + 1)}  # type: ignore[index]
    present = {r.seq for r in rows}
    assert present | named == set(range(1, b.next_seq)) and not present & named
    assert reports[0].extra["count"] == len(named)  # type: ignore[index]


def test_delivered_rows_between_drops_are_not_named(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", max_age=3600)
    b.append([rec(age=timedelta(hours=2)) for _ in range(10)])  # 1..10
    b.enforce_retention(now=NOW.timestamp())  # report 11
    b.append([rec() for _ in range(5)])  # 12..16, delivered
    b.delete([12, 13, 14, 15, 16])
    b.append([rec(age=timedelta(hours=2)) for _ in range(3)])  # 17..19
    events = b.enforce_retention(now=NOW.timestamp())  # report 20 replaces 11
    assert events[0].extra is not None and events[0].extra["ranges"] == [[1, 11], [17, 19]]
    assert [r.seq for r in b.rows()] == [20]


def test_retention_keeps_what_mqtt_holds_and_names_only_what_the_platform_lacks(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", max_age=3600, northbounds=MQTT | DATACENTER)
    b.append([rec(age=timedelta(hours=2)) for _ in range(10)])  # 1..10
    b.done([2, 3], MQTT)  # the platform has them; they wait for the data centre
    events = b.enforce_retention(now=NOW.timestamp(), keep={5, 6})  # in flight
    assert events[0].extra is not None and events[0].extra["ranges"] == [[1, 1], [4, 4], [7, 10]]
    assert events[0].extra["count"] == 6
    assert [r.seq for r in b.rows()] == [5, 6, 11]
    b.append([rec(age=timedelta(hours=2))])  # 12
    events = b.enforce_retention(now=NOW.timestamp(), keep={5, 6, 11})  # report 11 on its way: not folded
    assert events[0].extra is not None and events[0].extra["ranges"] == [[12, 12]]
    assert [r.seq for r in b.rows()] == [5, 6, 11, 13]


def test_rows_only_the_data_centre_waited_for_are_counted_and_said_when_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = Buffer(tmp_path / "b.db", max_age=3600, northbounds=MQTT | DATACENTER)
    b.append([rec(age=timedelta(hours=2)) for _ in range(10)])
    b.done(list(range(1, 11)), MQTT)  # the platform has them all
    with caplog.at_level(logging.WARNING, logger="collector.daemon.buffer"):
        assert b.enforce_retention(now=NOW.timestamp()) == []  # nothing to name to the platform
    assert b.depth(DATACENTER) == 0 and b.stats()["dropped_total"] == 10
    assert any("dropped 10 reading(s) the data centre had not received" in r.getMessage() for r in caplog.records)


def test_a_lost_buffers_report_stays_apart_and_retention_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, max_age=3600)
    b.append([rec() for _ in range(3)])
    b.close()
    path.unlink()  # deleted under the daemon: its seqs are unknown
    b = Buffer(path, max_age=3600)
    lost = next(r for r in b.rows() if r.extra and r.extra.get("reason") == "buffer_lost")
    b.append([rec(age=timedelta(hours=2)) for _ in range(5)])
    events = b.enforce_retention(now=NOW.timestamp())
    assert events[0].extra is not None and events[0].extra["ranges"] == [[lost.seq + 1, lost.seq + 5]]
    assert [r.seq for r in b.rows()] == [lost.seq, events[0].seq]


def test_a_power_cut_in_the_middle_of_a_retention_pass_leaves_no_drop_unnamed(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    b = Buffer(db, max_size=300_000)
    for _ in range(20):
        b.append([rec(f"m{i}", n=30) for i in range(200)])
    stored = set(range(1, b.next_seq))
    b.close()
    script = (
        "import os, signal\n"
        "from collector.daemon.buffer import Buffer\n"
        f"b = Buffer({str(db)!r}, max_size=300_000)\n"
        "b._vacuum = lambda: os.kill(os.getpid(), signal.SIGKILL)  # the power goes after the first batch\n"
        "b.enforce_retention()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False)
    assert proc.returncode == -9
    b = Buffer(db, max_size=300_000)
    rows = list(b.rows())
    present = {r.seq for r in rows}
    named = {
        s
        for r in rows
        if r.extra and r.extra.get("event") == "data_dropped"
        for a, z in r.extra["ranges"]
        for s in range(a, z + 1)
    }
    assert present & stored != stored  # the first batch was dropped before the cut
    assert stored <= present | named and not present & named


def test_a_failed_commit_leaves_the_buffer_usable(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db")
    b.append([rec()])
    b.conn.execute("CREATE TRIGGER no BEFORE INSERT ON outbox WHEN NEW.seq = 2 BEGIN SELECT RAISE(ABORT, 'x'); END")
    with contextlib.suppress(sqlite3.IntegrityError):
        b.append([rec()])
    assert not b.conn.in_transaction and b.next_seq == 2
    b.conn.execute("DROP TRIGGER no")
    assert [r.seq for r in b.append([rec()])] == [2]


def test_a_corrupt_buffer_is_moved_aside_and_seq_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path)
    b.append([rec() for _ in range(10)])
    b.delete([1, 2, 3])
    b.close()
    path.write_bytes(b"this is no longer a database" * 200)
    try:
        Buffer(path)  # `buffer stats` and the like: refuse, do not touch it
        raise AssertionError("a corrupt buffer was opened")
    except CorruptBuffer as exc:
        assert "moves it aside" in str(exc)
    b = Buffer(path, recover=True)
    aside = list(tmp_path.glob("b.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is no longer")
    rows = list(b.rows())
    assert len(rows) == 1 and rows[0].extra is not None
    report = rows[0].extra
    assert report["event"] == "data_dropped" and report["reason"] == "buffer_corrupt"
    # Nothing could be read of the old file: every seq below the new file's first is named.
    assert report["first_seq"] is None and report["last_seq"] == rows[0].seq - 1 >= 10
    assert b.append([rec()])[0].seq == rows[0].seq + 1


def test_salvage_reads_the_unsent_seqs_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path)
    b.append([rec() for _ in range(10)])
    b.delete([1, 2, 3])
    b.close()
    assert _salvage(str(path)) == (list(range(4, 11)), 11)
    path.write_bytes(b"x" * 8192)
    assert _salvage(str(path)) == (None, None)
