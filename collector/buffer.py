"""The SQLite outbox (DESIGN.md §7): every message is durable here before it is published.

* One file, WAL, ``synchronous=FULL``, one transaction per batch: a batch of readings is on the
  card before anything is sent, and an acknowledged delete is not rolled back by a power cut.
* ``seq`` is assigned in the transaction that stores the message, from a counter kept in the same
  file, so it survives restarts and never repeats.
* Readings are stored compactly: the point names of a meter live once in ``layouts``; a row holds
  its values as little-endian float64s in that order (8 bytes a value, plus a small row header);
  the slot is stored as its distance from ``ts`` in seconds (usually 0: no bytes at all).
* Rows leave only when the broker acknowledged them (``delete``) or by the retention limits
  (``enforce_retention``), which count what they drop and report it as an event in the same
  transaction.
* ``auto_vacuum=INCREMENTAL`` so the file shrinks again after a long outage.

Not thread-safe by design: the daemon calls it from one dedicated thread (``AsyncBuffer``).
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

SCHEMA_VERSION = 2
KIND_READING, KIND_EVENT, KIND_INTERVAL = 0, 1, 2
QUALITIES = ("good", "partial", "bad")


@dataclass(slots=True)
class Record:
    """A reading to store: what the poll produced, before it has a seq."""

    meter: str
    slot: datetime
    ts: datetime
    values: dict[str, float]
    quality: str = "good"
    errors: dict[str, str] = field(default_factory=dict)
    synced: bool = True  #: False: taken while the wall clock was not synchronised


@dataclass(slots=True)
class Row:
    """A stored message, as the publisher sees it."""

    seq: int
    kind: int
    meter: str | None
    slot: int | None  #: unix seconds
    ts_ms: int
    quality: int
    values: dict[str, float] | None
    extra: dict[str, Any] | None


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class Buffer:
    def __init__(self, path: str | Path, *, max_age: float = 30 * 86400, max_size: int = 2 * 1000**3) -> None:
        self.path = str(path)
        self.max_age = max_age
        self.max_size = max_size
        self.conn = self._open()
        self.db = sqlite_utils.Database(self.conn)
        self._migrate()
        self._meters: dict[str, int] = {name: i for i, name in self.conn.execute("SELECT id, name FROM meters")}
        self._meter_names = {i: name for name, i in self._meters.items()}
        self._layouts: dict[tuple[str, ...], int] = {}
        self._layout_names: dict[int, tuple[str, ...]] = {}
        for i, names in self.conn.execute("SELECT id, names FROM layouts"):
            t = tuple(json.loads(names))
            self._layouts[t], self._layout_names[i] = i, t
        self.next_seq = self._state("next_seq", 1)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # auto_vacuum must be set before the first table exists; harmless afterwards.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=4194304")  # truncate the WAL back to 4 MB after checkpoints
        conn.execute("PRAGMA busy_timeout=5000")  # `buffer stats` may read while the daemon writes
        return conn

    def _migrate(self) -> None:
        tables = set(self.db.table_names())
        if "state" not in tables:
            with self._tx():
                self.db.table("state").create({"key": str, "value": int}, pk="key")
                self.db.table("meters").create({"id": int, "name": str}, pk="id", not_null={"name"})
                self.db.table("meters").create_index(["name"], unique=True)
                self.db.table("layouts").create({"id": int, "names": str}, pk="id", not_null={"names"})
                self.db.table("layouts").create_index(["names"], unique=True)
                self.db.table("outbox").create(
                    {
                        "seq": int,
                        "kind": int,
                        "meter": int,
                        "slot": int,
                        "ts": int,
                        "quality": int,
                        "layout": int,
                        "data": bytes,
                        "extra": str,
                    },
                    pk="seq",
                    not_null={"kind", "ts"},
                )
                self.conn.execute(
                    "INSERT INTO state VALUES ('schema_version', ?), ('next_seq', 1), ('dropped_total', 0)",
                    (1,),
                )
        version = self._state("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: buffer schema {version} is newer than this version ({SCHEMA_VERSION})")
        if version < 2:
            with self._tx():
                # Counter state (last good value, offsets, interval boundaries) per meter and point.
                self.db.table("ledger").create({"meter": str, "point": str, "state": str}, pk=("meter", "point"))
                self.conn.execute("UPDATE state SET value = 2 WHERE key = 'schema_version'")

    def _state(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self) -> Buffer._Tx:
        return Buffer._Tx(self.conn)

    def _meter_id(self, name: str) -> int:
        mid = self._meters.get(name)
        if mid is None:
            mid = self.conn.execute("INSERT INTO meters(name) VALUES (?)", (name,)).lastrowid or 0
            self._meters[name], self._meter_names[mid] = mid, name
        return mid

    def _layout_id(self, names: tuple[str, ...]) -> int:
        lid = self._layouts.get(names)
        if lid is None:
            lid = self.conn.execute("INSERT INTO layouts(names) VALUES (?)", (json.dumps(names),)).lastrowid or 0
            self._layouts[names], self._layout_names[lid] = lid, names
        return lid

    def append(
        self,
        records: list[Record],
        events: list[dict[str, Any]] = (),  # type: ignore[assignment]
        intervals: list[dict[str, Any]] = (),  # type: ignore[assignment]
        ledger: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> list[Row]:
        """Store readings, events, interval consumption and the counter state in one transaction;
        returns the messages as rows, each with its seq."""
        if not records and not events and not intervals and not ledger:
            return []
        rows: list[Row] = []
        params: list[tuple[Any, ...]] = []
        cache_meters, cache_layouts = dict(self._meters), dict(self._layouts)
        seq = self.next_seq
        try:
            with self._tx():
                for r in records:
                    names = tuple(r.values)
                    extra: dict[str, Any] = {}
                    if r.errors:
                        extra["errors"] = r.errors
                    if not r.synced:
                        extra["clock"] = "unsynced"
                    q = QUALITIES.index(r.quality)
                    data = struct.pack(f"<{len(names)}d", *r.values.values())
                    slot, ts = int(r.slot.timestamp()), _ms(r.ts)
                    params.append(
                        (
                            seq,
                            KIND_READING,
                            self._meter_id(r.meter),
                            # The slot as seconds before ts: almost always 0, which SQLite stores in no bytes.
                            ts // 1000 - slot,
                            ts,
                            q,
                            self._layout_id(names),
                            data,
                            json.dumps(extra) if extra else None,
                        )
                    )
                    rows.append(Row(seq, KIND_READING, r.meter, slot, ts, q, r.values, extra or None))
                    seq += 1
                now = int(time.time() * 1000)
                for iv in intervals:
                    body = {k: v for k, v in iv.items() if k != "meter"}
                    params.append(
                        (seq, KIND_INTERVAL, self._meter_id(iv["meter"]), None, now, 0, None, None, json.dumps(body))
                    )
                    rows.append(Row(seq, KIND_INTERVAL, iv["meter"], None, now, 0, None, body))
                    seq += 1
                for e in events:
                    meter = e.get("meter")
                    params.append(
                        (
                            seq,
                            KIND_EVENT,
                            self._meter_id(meter) if meter else None,
                            None,
                            now,
                            0,
                            None,
                            None,
                            json.dumps(e),
                        )
                    )
                    rows.append(Row(seq, KIND_EVENT, meter, None, now, 0, None, e))
                    seq += 1
                self.conn.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?,?,?,?)", params)
                self.conn.execute("UPDATE state SET value = ? WHERE key = 'next_seq'", (seq,))
                if ledger:
                    self.conn.executemany(
                        "INSERT OR REPLACE INTO ledger VALUES (?,?,?)",
                        [(m, p, json.dumps(s)) for (m, p), s in ledger.items()],
                    )
        except BaseException:
            self._meters, self._layouts = cache_meters, cache_layouts
            self._meter_names = {i: n for n, i in cache_meters.items()}
            self._layout_names = {i: n for n, i in cache_layouts.items()}
            raise
        self.next_seq = seq
        return rows

    def _row(self, r: tuple[Any, ...]) -> Row:
        seq, kind, meter, slot_delta, ts, quality, layout, data, extra = r
        values, slot = None, None
        if kind == KIND_READING:
            slot = ts // 1000 - slot_delta
            names = self._layout_names[layout]
            values = dict(zip(names, struct.unpack(f"<{len(names)}d", data), strict=True))
        return Row(
            seq,
            kind,
            self._meter_names.get(meter) if meter is not None else None,
            slot,
            ts,
            quality,
            values,
            json.loads(extra) if extra else None,
        )

    def ledger(self) -> list[tuple[str, str, dict[str, Any]]]:
        """The stored counter state: (meter, point, state)."""
        return [(m, p, json.loads(s)) for m, p, s in self.conn.execute("SELECT meter, point, state FROM ledger")]

    def fetch(self, after: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with seq > ``after``, oldest first."""
        cur = self.conn.execute("SELECT * FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [self._row(r) for r in cur]

    def rows(self) -> Iterator[Row]:
        after = 0
        while batch := self.fetch(after, 1000):
            yield from batch
            after = batch[-1].seq

    def delete(self, seqs: list[int]) -> None:
        """Rows the broker acknowledged."""
        if seqs:
            with self._tx():
                self.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def depth(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def oldest_ts_ms(self) -> int | None:
        row = self.conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def used_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def enforce_retention(self, now: float | None = None) -> list[Row]:
        """Drop what is older than max_age, then the oldest while the data exceeds max_size.

        Each drop is counted and reported by an event stored in the same transaction; returns
        those events' rows. Dropped pages go back to the file system (incremental vacuum).
        """
        now = time.time() if now is None else now
        out: list[Row] = []
        cutoff = int((now - self.max_age) * 1000)
        aged = [d for d in iter(lambda: self._drop_oldest(5000, cutoff), None)]
        if aged:
            out += self._report_drop("max_age", aged)
        sized: list[tuple[int, int, int]] = []
        while (excess := self.used_bytes() - self.max_size) > 0:
            count = self.depth()
            if count == 0:
                break
            n = max(100, min(count, excess // max(1, self.used_bytes() // count) + 1))
            dropped = self._drop_oldest(n, None)
            if dropped is None:
                break
            sized.append(dropped)
            self._vacuum()
        if sized:
            out += self._report_drop("max_size", sized)
        if out:
            self._vacuum()
        return out

    def _drop_oldest(self, n: int, older_than_ms: int | None) -> tuple[int, int, int] | None:
        """Delete up to n oldest rows (only those before the first row not older than the cutoff,
        if one is given); (first seq, last seq, rows deleted) or None when nothing went."""
        with self._tx():
            rows = self.conn.execute("SELECT seq, ts FROM outbox ORDER BY seq LIMIT ?", (n,)).fetchall()
            if older_than_ms is not None:
                keep = next((i for i, (_, ts) in enumerate(rows) if ts >= older_than_ms), len(rows))
                rows = rows[:keep]
            if not rows:
                return None
            first, last = rows[0][0], rows[-1][0]
            deleted = self.conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
        return first, last, deleted

    def _report_drop(self, reason: str, drops: list[tuple[int, int, int]]) -> list[Row]:
        count = sum(d[2] for d in drops)
        total = self._state("dropped_total", 0) + count
        with self._tx():
            self.conn.execute("UPDATE state SET value = ? WHERE key = 'dropped_total'", (total,))
        event = {
            "event": "data_dropped",
            "reason": reason,
            "count": count,
            "first_seq": drops[0][0],
            "last_seq": drops[-1][1],
            "dropped_total": total,
            "limit": self.max_age if reason == "max_age" else self.max_size,
        }
        return self.append([], [event])

    def _vacuum(self) -> None:
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free:
            self.conn.executescript(f"PRAGMA incremental_vacuum({int(free)});")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def stats(self) -> dict[str, Any]:
        oldest = self.oldest_ts_ms()
        file_bytes = sum(Path(self.path + s).stat().st_size for s in ("", "-wal") if Path(self.path + s).exists())
        return {
            "path": self.path,
            "depth": self.depth(),
            "oldest_unsent_age_s": round(time.time() - oldest / 1000, 1) if oldest else None,
            "next_seq": self.next_seq,
            "dropped_total": self._state("dropped_total", 0),
            "used_bytes": self.used_bytes(),
            "file_bytes": file_bytes,
        }

    def integrity(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


T = TypeVar("T")


class AsyncBuffer:
    """The buffer behind one dedicated thread: SQLite never blocks the event loop or a bus."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")

    @classmethod
    async def open(cls, path: str, *, max_age: float, max_size: int) -> AsyncBuffer:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        buf = await asyncio.get_running_loop().run_in_executor(
            pool, lambda: Buffer(path, max_age=max_age, max_size=max_size)
        )
        self = cls(buf)
        self._pool.shutdown()
        self._pool = pool
        return self

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        await self.call(self.buffer.close)
        self._pool.shutdown(wait=True)


def seconds_iso(slot: int) -> str:
    return datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ms_iso(ts_ms: int) -> str:
    dt = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def finite(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}
