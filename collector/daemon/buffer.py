"""The SQLite outbox (docs/design.md §7): every message is durable here before it is published.

* One file, WAL, ``synchronous=FULL``, one transaction per batch: a batch of readings is on the
  card before anything is sent, and an acknowledged delete is not rolled back by a power cut.
* ``seq`` is assigned in the transaction that stores the message, from a counter kept in the same
  file, so it survives restarts and never repeats.
* Readings are stored compactly: the point names of a meter live once in ``layouts``; a row holds
  its values as little-endian float64s in that order (8 bytes a value, plus a small row header);
  the slot is stored as its distance from ``ts`` in seconds (usually 0: no bytes at all).
* Each row carries a ``pending`` bit mask of the northbounds that still need it (MQTT, the data
  centre: docs/datacenter.md, "The outbox"), set from the configured northbounds and the row's kind
  (readings go to every northbound, interval consumption and events to MQTT only; a row no
  northbound takes is not stored). A northbound's acknowledgement clears its bit (``done``); a row
  leaves when its mask is 0, or by the retention limits (``enforce_retention``), which count what
  they drop and report it as an event: each batch of drops commits with its report (which folds
  the one before), so a power cut leaves no dropped row unnamed.
* ``auto_vacuum=INCREMENTAL`` so the file shrinks again after a long outage.

Not thread-safe by design: the daemon calls it from one dedicated thread (``AsyncBuffer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlite_utils

from collector.daemon.records import KIND_EVENT, KIND_INTERVAL, KIND_READING, QUALITIES, Event, Interval, Record, Row

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
#: the northbounds' bits in a row's ``pending`` mask (schema 4)
MQTT, DATACENTER = 1, 2
NORTHBOUNDS = {MQTT: "mqtt", DATACENTER: "datacenter"}
_COLUMNS = "seq, kind, meter, slot, ts, quality, layout, data, extra"
_SLOT = "(ts / 1000 - slot)"  #: a reading's slot (unix seconds) in SQL: ``slot`` holds its distance from ts
#: the quality column of an event that retention never drops (the drop reports themselves)
EVENT_KEPT = 1


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Ascending seqs as (first, last) runs."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


MAX_RANGES = 200  #: a drop report names at most this many runs; beyond, the closest runs are joined


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, joined runs. Past MAX_RANGES runs the smallest gaps are closed: the report then also
    names seqs that were delivered (a message that arrives is always right; a named seq that never
    arrives is explained)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    while len(out) > MAX_RANGES:
        i = min(range(len(out) - 1), key=lambda k: out[k + 1][0] - out[k][1])
        out[i : i + 2] = [(out[i][0], out[i + 1][1])]
    return out


SEQ_BLOCK = 100_000  #: seqs reserved per write of the high-water mark file


class CorruptBuffer(Exception):
    """The buffer file is not a readable SQLite database."""


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def _salvage(path: str) -> tuple[list[int] | None, int | None]:
    """What can still be read of a corrupt buffer: its unsent seqs and its next seq."""
    seqs: list[int] | None = None
    next_seq: int | None = None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None, None
    with contextlib.closing(conn):
        with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
            next_seq = int(conn.execute("SELECT value FROM state WHERE key = 'next_seq'").fetchone()[0])
        with contextlib.suppress(sqlite3.Error):
            seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM outbox ORDER BY seq")]
    if seqs and next_seq is None:
        next_seq = seqs[-1] + 1
    return seqs, next_seq


class Buffer:
    conn: sqlite3.Connection
    next_seq: int
    fresh: bool  #: the file was created by this open

    def __init__(
        self,
        path: str | Path,
        *,
        max_age: float = 30 * 86400,
        max_size: int = 2 * 1000**3,
        recover: bool = False,
        northbounds: int = MQTT,
    ) -> None:
        """``recover`` (the daemon): a corrupt file is moved aside and a new one started, its seq
        continuing above every seq the old one may have used; otherwise CorruptBuffer is raised.
        ``northbounds``: the bits of the configured northbounds, which new rows wait for."""
        self.path = str(path)
        self.northbounds = northbounds
        self.max_age = max_age
        self.max_size = max_size
        self._seq_file = Path(self.path + ".seq") if self.path != ":memory:" else None
        self._reserved = self._read_reserved()
        self._seq_file_failed = False
        lost: dict[str, Any] | None = None
        try:
            self._load()
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                raise
            if not recover:
                raise CorruptBuffer(f"{self.path}: {exc} (the daemon moves it aside when it starts)") from None
            lost = self._move_aside(exc)
            self._load()
        if self.fresh and self._reserved > self.next_seq:
            # A new file where one was before (corrupt, or deleted): continue above what it may have used.
            lost = lost or {"reason": "buffer_lost", "first_seq": None, "count": None}
            self.next_seq = self._reserved
        if lost is not None:
            lost.setdefault("last_seq", self.next_seq - 1)
            lost["dropped_total"] = self._state("dropped_total", 0)
            lost["limit"] = None
            self.append([], [Event("data_dropped", None, lost)], kept=True)

    def _load(self) -> None:
        self.conn = self._open()
        self.db = sqlite_utils.Database(self.conn)
        self.fresh = "state" not in set(self.db.table_names())
        self._migrate()
        self._meters: dict[str, int] = {name: i for i, name in self.conn.execute("SELECT id, name FROM meters")}
        self._meter_names = {i: name for name, i in self._meters.items()}
        self._layouts: dict[tuple[str, ...], int] = {}
        self._layout_names: dict[int, tuple[str, ...]] = {}
        for i, names in self.conn.execute("SELECT id, names FROM layouts"):
            t = tuple(json.loads(names))
            self._layouts[t], self._layout_names[i] = i, t
        self.next_seq = self._state("next_seq", 1)

    def _move_aside(self, exc: sqlite3.DatabaseError) -> dict[str, Any]:
        """Rename the corrupt file (and its WAL) with a timestamp; what it held is named by the
        returned drop report: the seqs still in it if they can be read, else every seq up to where
        the new file starts."""
        with contextlib.suppress(Exception):
            self.conn.close()
        seqs, next_seq = _salvage(self.path)
        self._reserved = max(self._reserved, next_seq or 0)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = f"{self.path}.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        log.critical(
            "buffer %s is corrupt (%s): moved aside to %s and a new buffer started; %s",
            self.path,
            exc,
            aside,
            f"{len(seqs)} unsent message(s) in it are reported lost" if seqs is not None else "its contents are lost",
        )
        event: dict[str, Any] = {"reason": "buffer_corrupt", "moved_to": aside}
        if seqs:
            merged = _merge(_ranges(seqs))
            event.update(
                count=sum(b - a + 1 for a, b in merged),
                first_seq=merged[0][0],
                last_seq=merged[-1][1],
                ranges=[list(r) for r in merged],
            )
        else:
            event.update(first_seq=None, count=None)
        return event

    def _read_reserved(self) -> int:
        """The seq high-water mark kept beside the file: no seq at or above it was ever used."""
        if self._seq_file is None:
            return 0
        try:
            return int(self._seq_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _reserve(self, upto: int) -> None:
        """Move the high-water mark past ``upto`` (in blocks, so the file is written rarely)."""
        if self._seq_file is None or upto < self._reserved:
            return
        mark = upto + SEQ_BLOCK
        tmp = self._seq_file.with_name(self._seq_file.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{mark}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._seq_file)
            self._reserved = mark
        except OSError as exc:
            if not self._seq_file_failed:
                self._seq_file_failed = True
                log.warning("cannot write the seq mark %s: %s (seq continuity after a lost buffer)", tmp, exc)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # auto_vacuum must be set before the first table exists; harmless afterwards.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=4194304")  # truncate the WAL back to 4 MB after checkpoints
        # The WAL counts toward max_size: a small buffer checkpoints sooner (SQLite's default: 1000 pages).
        conn.execute(f"PRAGMA wal_autocheckpoint={max(32, min(1000, self.max_size // 4096 // 20))}")
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
        if version < 3:
            with self._tx():
                # Drop reports are marked so that retention never drops them (schema 3).
                self.conn.execute(
                    f"UPDATE outbox SET quality = {EVENT_KEPT} WHERE kind = {KIND_EVENT} "
                    """AND json_extract(extra, '$.event') = 'data_dropped'"""
                )
                self.conn.execute("UPDATE state SET value = 3 WHERE key = 'schema_version'")
        if version < 4:
            with self._tx():
                # A delivery position per northbound (schema 4): what was stored before went to MQTT only.
                self.conn.execute(f"ALTER TABLE outbox ADD COLUMN pending INTEGER NOT NULL DEFAULT {MQTT}")
                self.conn.execute(f"CREATE INDEX outbox_datacenter ON outbox(seq) WHERE pending & {DATACENTER}")
                # Periods handed to the data centre at least once: sent again, they go as continuous.
                self.conn.execute("CREATE TABLE datacenter_sent (period INTEGER PRIMARY KEY)")
                self.conn.execute("UPDATE state SET value = 4 WHERE key = 'schema_version'")

    def _state(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    class _Tx:
        """BEGIN IMMEDIATE ... COMMIT; inside a transaction already, part of that one."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn
            self.nested = False

        def __enter__(self) -> None:
            self.nested = self.conn.in_transaction
            if not self.nested:
                self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if self.nested:
                return
            try:
                if exc_type is None:
                    self.conn.execute("COMMIT")
            finally:
                if self.conn.in_transaction:
                    # A failed statement or COMMIT (a full disk): roll back; SQLite may have done it already,
                    # and the original error is the one that matters.
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")

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
        events: Sequence[Event] = (),
        intervals: Sequence[Interval] = (),
        ledger: dict[tuple[str, str], dict[str, Any]] | None = None,
        *,
        kept: bool = False,
    ) -> list[Row]:
        """Store readings, events, interval consumption and the counter state in one transaction;
        returns the messages as rows, each with its seq. ``kept``: the events are drop reports,
        which retention never drops."""
        if not records and not events and not intervals and not ledger:
            return []
        # Readings go to every northbound; interval consumption and events are MQTT's alone.
        readings_to, others_to = self.northbounds, self.northbounds & MQTT
        if not readings_to:
            records = []
        if not others_to:
            events, intervals = (), ()
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
                            readings_to,
                        )
                    )
                    rows.append(Row(seq, KIND_READING, r.meter, slot, ts, q, r.values, extra or None))
                    seq += 1
                now = int(time.time() * 1000)
                for iv in intervals:
                    body = iv.body()
                    params.append(
                        (
                            seq,
                            KIND_INTERVAL,
                            self._meter_id(iv.meter),
                            None,
                            now,
                            0,
                            None,
                            None,
                            json.dumps(body),
                            others_to,
                        )
                    )
                    rows.append(Row(seq, KIND_INTERVAL, iv.meter, None, now, 0, None, body))
                    seq += 1
                for ev in events:
                    meter, e = ev.meter, ev.body()
                    params.append(
                        (
                            seq,
                            KIND_EVENT,
                            self._meter_id(meter) if meter else None,
                            None,
                            now,
                            EVENT_KEPT if kept else 0,
                            None,
                            None,
                            json.dumps(e),
                            others_to,
                        )
                    )
                    rows.append(Row(seq, KIND_EVENT, meter, None, now, EVENT_KEPT if kept else 0, None, e))
                    seq += 1
                self.conn.executemany(f"INSERT INTO outbox({_COLUMNS}, pending) VALUES (?,?,?,?,?,?,?,?,?,?)", params)
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
        if seq >= self._reserved:
            self._reserve(seq)
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

    def fetch(self, after: int, limit: int, northbound: int | None = None) -> list[Row]:
        """Up to ``limit`` rows with seq > ``after``, oldest first: every row, or those ``northbound``
        still needs."""
        if northbound is None:
            sql, args = f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        else:
            sql = f"SELECT {_COLUMNS} FROM outbox WHERE seq > ? AND pending & {int(northbound)} ORDER BY seq LIMIT ?"
            args = (after, limit)
        return [self._row(r) for r in self.conn.execute(sql, args)]

    def rows(self) -> Iterator[Row]:
        after = 0
        while batch := self.fetch(after, 1000):
            yield from batch
            after = batch[-1].seq

    def delete(self, seqs: list[int]) -> None:
        """Rows the MQTT broker acknowledged."""
        self.done(seqs, MQTT)

    def done(self, seqs: list[int], northbound: int) -> None:
        """``northbound`` has these rows: its bit is cleared, and a row no northbound needs any more
        is deleted."""
        if seqs:
            with self._tx():
                self.conn.executemany(
                    "DELETE FROM outbox WHERE seq = ? AND pending & ? = 0", [(s, ~northbound) for s in seqs]
                )
                self.conn.executemany(
                    "UPDATE outbox SET pending = pending & ? WHERE seq = ? AND pending & ?",
                    [(~northbound, s, northbound) for s in seqs],
                )

    def release(self, northbounds: int) -> int:
        """Rows waiting for northbounds no longer configured are not waited for any more (the daemon,
        on start); the number of rows that left the buffer."""
        if not northbounds:
            return 0
        with self._tx():
            gone = self.conn.execute("DELETE FROM outbox WHERE pending & ? = 0", (~northbounds,)).rowcount
            self.conn.execute("UPDATE outbox SET pending = pending & ? WHERE pending & ?", (~northbounds, northbounds))
            if northbounds & DATACENTER:
                self.conn.execute("DELETE FROM datacenter_sent")
        return int(gone)

    def depth(self, northbound: int | None = None) -> int:
        """Rows stored: all of them, or those ``northbound`` still needs."""
        if northbound is None:
            return int(self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        # The bit as a literal: SQLite uses the partial index (pending & 2) only for a literal term.
        return int(self.conn.execute(f"SELECT count(*) FROM outbox WHERE pending & {int(northbound)}").fetchone()[0])

    def oldest_ts_ms(self, northbound: int | None = None) -> int | None:
        if northbound is None:
            row = self.conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
        else:
            row = self.conn.execute(
                f"SELECT ts FROM outbox WHERE pending & {int(northbound)} ORDER BY seq LIMIT 1"
            ).fetchone()
        return int(row[0]) if row else None

    # -- the data centre's side (collector/daemon/datacenter.py): rows grouped into report periods --
    # A period is (end - period, end] in unix seconds, end a multiple of period: a reading at slot
    # 12:15:00 is the 12:15 period's value (the counter at the boundary).

    def datacenter_compact(self, closed_end: int, period: int) -> int:
        """In every closed period (end <= closed_end) keep, per meter, the one reading the data centre
        gets (the last with values, else the last) and stop waiting for the others; rows compacted
        once are not looked at again. Returns how many readings the data centre no longer needs."""
        mark = self._state("datacenter_compacted", 0)
        rows = self.conn.execute(
            f"SELECT seq, meter, {_SLOT}, quality FROM outbox WHERE pending & {DATACENTER} AND seq > ? "
            f"AND kind = {KIND_READING} ORDER BY seq",
            (mark,),
        ).fetchall()
        best: dict[tuple[int, int], tuple[bool, int, int]] = {}
        drop: list[int] = []
        last = mark
        for seq, meter, slot, quality in rows:
            end = -(-slot // period) * period
            if end > closed_end:
                break
            last = seq
            rank = (quality != QUALITIES.index("bad"), slot, seq)
            key = (meter, end)
            kept = best.get(key)
            if kept is None:
                best[key] = rank
            elif rank > kept:
                drop.append(kept[2])
                best[key] = rank
            else:
                drop.append(seq)
        with self._tx():
            self.done(drop, DATACENTER)
            self.conn.execute("INSERT OR REPLACE INTO state VALUES ('datacenter_compacted', ?)", (last,))
        return len(drop)

    def datacenter_periods(self, closed_end: int, period: int, limit: int) -> list[tuple[int, list[Row], bool]]:
        """The oldest ``limit`` closed periods with readings the data centre still needs: (end, its rows
        oldest first, sent before)."""
        ends = [
            int(r[0])
            for r in self.conn.execute(
                f"SELECT DISTINCT ({_SLOT} + ? - 1) / ? * ? AS e FROM outbox "
                f"WHERE pending & {DATACENTER} AND kind = {KIND_READING} AND e <= ? ORDER BY e LIMIT ?",
                (period, period, period, closed_end, limit),
            )
        ]
        if not ends:
            return []
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE pending & {DATACENTER} AND kind = {KIND_READING} "
            f"AND {_SLOT} > ? AND {_SLOT} <= ? ORDER BY seq",
            (ends[0] - period, ends[-1]),
        ).fetchall()
        by_end: dict[int, list[Row]] = {e: [] for e in ends}
        for r in rows:
            row = self._row(r)
            assert row.slot is not None
            end = -(-row.slot // period) * period
            if end in by_end:
                by_end[end].append(row)
        marks = ",".join("?" * len(ends))
        sent = {
            int(r[0]) for r in self.conn.execute(f"SELECT period FROM datacenter_sent WHERE period IN ({marks})", ends)
        }
        return [(e, by_end[e], e in sent) for e in ends]

    def datacenter_sent(self, ends: list[int]) -> None:
        """These periods went out once: sent again, they are continuous packets."""
        if ends:
            with self._tx():
                self.conn.executemany("INSERT OR IGNORE INTO datacenter_sent VALUES (?)", [(e,) for e in ends])

    def datacenter_done(self, end: int, seqs: list[int]) -> None:
        """The data centre acknowledged a period: it no longer needs these rows."""
        with self._tx():
            self.done(seqs, DATACENTER)
            self.conn.execute("DELETE FROM datacenter_sent WHERE period = ?", (end,))

    def used_bytes(self) -> int:
        """What counts toward ``max_size``: the pages in use and the WAL file beside them."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size) + self._wal_bytes()

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def enforce_retention(self, now: float | None = None, keep: Collection[int] = ()) -> list[Row]:
        """Drop what is older than max_age, then the oldest while the data exceeds max_size.

        What is dropped is named, seq by seq, by one ``data_dropped`` event stored in the same
        file. Drop reports are never dropped themselves: a later pass replaces the reports still
        waiting by one that covers their ranges, their own seqs and the new drops, so every seq
        the platform never receives is named by a report that is still on its way. Returns that
        report's row. Dropped pages go back to the file system (incremental vacuum).

        ``keep``: seqs the MQTT side holds (in flight, acknowledged and not yet deleted). They are
        neither dropped nor folded into the new report: the platform may have them already, and a
        seq it received must never be named as lost. Nor is a dropped row MQTT had delivered (one
        still waiting for the data centre) named to the platform.
        """
        now = time.time() if now is None else now
        cutoff = int((now - self.max_age) * 1000)
        batches: list[tuple[int, int, list[Row]]] = []  #: (rows named, rows the platform had, report)
        reason = ""
        first = self.conn.execute(f"SELECT ts FROM outbox WHERE {self._DROPPABLE} ORDER BY seq LIMIT 1").fetchone()
        while first is not None and first[0] < cutoff and (batch := self._drop_batch("max_age", 5000, cutoff, keep)):
            batches.append(batch)
            reason = "max_age"
        if self.used_bytes() > self.max_size and self._wal_bytes():
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        while (excess := self.used_bytes() - self.max_size) > 0:
            count = self.depth(None)
            if count == 0:
                break
            n = max(100, min(count, excess // max(1, self.used_bytes() // count) + 1))
            if not (batch := self._drop_batch("max_size", n, None, keep)):
                break  # only drop reports (and what MQTT holds) are left
            batches.append(batch)
            reason = "max_size"
            self._vacuum()
        if not batches:
            return []
        named, unnamed = sum(b[0] for b in batches), sum(b[1] for b in batches)
        out = next((b[2] for b in reversed(batches) if b[2]), [])  # each report folds the one before
        total = self._state("dropped_total", 0)
        if unnamed:
            # Rows MQTT had delivered, waiting for the data centre alone: not named to the platform
            # (it has them), but counted and said, as the data centre's protocol has no drop report.
            log.warning(
                "buffer retention (%s) dropped %d reading(s) the data centre had not received; "
                "%d dropped in all (dropped_total)",
                reason,
                unnamed,
                total,
            )
        if named and not out:
            # No northbound takes drop reports (no mqtt: the data centre's protocol has none).
            log.warning(
                "buffer retention (%s) dropped %d unsent message(s); %d dropped in all (dropped_total)",
                reason,
                named,
                total,
            )
        self._vacuum()
        return out

    def _drop_batch(
        self, reason: str, n: int, older_than_ms: int | None, keep: Collection[int]
    ) -> tuple[int, int, list[Row]] | None:
        """One batch of the oldest rows dropped, counted and named in one transaction with its
        report, so a power cut leaves both or neither; None when nothing was left to drop. Returns
        the rows named, the rows the platform had (the data centre's alone), the report's row."""
        with self._tx():
            gone, ranges = self._drop_oldest(n, older_than_ms, keep)
            if not gone:
                return None
            count = sum(b - a + 1 for a, b in ranges)
            if gone > count:
                self._add_dropped(gone - count)
            return count, gone - count, self._report_drop(reason, ranges, keep) if ranges else []

    def _add_dropped(self, count: int) -> int:
        total = self._state("dropped_total", 0) + count
        with self._tx():
            self.conn.execute("UPDATE state SET value = ? WHERE key = 'dropped_total'", (total,))
        return total

    _DROPPABLE = f"NOT (kind = {KIND_EVENT} AND quality = {EVENT_KEPT})"

    def _drop_oldest(
        self, n: int, older_than_ms: int | None, keep: Collection[int]
    ) -> tuple[int, list[tuple[int, int]]]:
        """Delete up to n oldest rows (drop reports and ``keep`` excepted; only those before the
        first row not older than the cutoff, if one is given): how many were deleted, and the seq
        ranges of those the platform had not received."""
        with self._tx():
            rows = self.conn.execute(
                f"SELECT seq, ts, pending FROM outbox WHERE {self._DROPPABLE} ORDER BY seq LIMIT ?", (n + len(keep),)
            ).fetchall()
            if older_than_ms is not None:
                young = next((i for i, (_, ts, _) in enumerate(rows) if ts >= older_than_ms), len(rows))
                rows = rows[:young]
            rows = [r for r in rows if r[0] not in keep][:n]
            self.conn.executemany(
                f"DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND {self._DROPPABLE}", _ranges([r[0] for r in rows])
            )
        unsent = [r[0] for r in rows if r[2] & MQTT] if self.northbounds & MQTT else [r[0] for r in rows]
        return len(rows), _ranges(unsent)

    def _report_drop(self, reason: str, dropped: list[tuple[int, int]], keep: Collection[int]) -> list[Row]:
        count = sum(b - a + 1 for a, b in dropped)
        total = self._add_dropped(count)
        # The reports still waiting are folded into this one (their seqs are named by it instead);
        # not those on their way, nor a lost buffer's, which names no seqs (its range is unknown).
        earlier = self.conn.execute(
            f"SELECT seq, extra FROM outbox WHERE kind = {KIND_EVENT} AND quality = {EVENT_KEPT} ORDER BY seq"
        ).fetchall()
        spans = list(dropped)
        folded = []
        for seq, extra in earlier:
            old = json.loads(extra)
            if seq in keep or (not old.get("ranges") and old.get("first_seq") is None):
                continue
            spans += [tuple(r) for r in old.get("ranges") or [[old["first_seq"], old["last_seq"]]]]
            spans.append((seq, seq))
            folded.append(seq)
        merged = _merge(spans)
        event = {
            "reason": reason,
            "count": sum(b - a + 1 for a, b in merged),
            "first_seq": merged[0][0],
            "last_seq": merged[-1][1],
            "ranges": [list(r) for r in merged],
            "dropped_total": total,
            "limit": self.max_age if reason == "max_age" else self.max_size,
        }
        with self._tx():
            rows = self.append([], [Event("data_dropped", None, event)], kept=True)
            if folded:
                self.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in folded])
        return rows

    def _vacuum(self) -> None:
        """Give freed pages back to the file system. A failure (a full disk) is logged, not raised:
        it must not stop the pass before its drop report is stored; the next pass tries again."""
        try:
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                self.conn.executescript(f"PRAGMA incremental_vacuum({int(free)});")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OSError) as exc:
            log.warning("buffer retention could not give freed pages back to the file system: %s", exc)

    def stats(self) -> dict[str, Any]:
        """``depth`` and ``oldest_unsent_age_s`` are MQTT's figures (as before schema 4), the data
        centre's beside them; ``rows`` counts every row stored."""
        oldest = self.oldest_ts_ms(MQTT)
        dc_oldest = self.oldest_ts_ms(DATACENTER)
        file_bytes = sum(Path(self.path + s).stat().st_size for s in ("", "-wal") if Path(self.path + s).exists())
        now = time.time()
        return {
            "path": self.path,
            "depth": self.depth(MQTT),
            "oldest_unsent_age_s": round(now - oldest / 1000, 1) if oldest else None,
            "datacenter_depth": self.depth(DATACENTER),
            "datacenter_oldest_age_s": round(now - dc_oldest / 1000, 1) if dc_oldest else None,
            "rows": self.depth(None),
            "next_seq": self.next_seq,
            "dropped_total": self._state("dropped_total", 0),
            "used_bytes": self.used_bytes(),
            "file_bytes": file_bytes,
        }

    def integrity(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


P = ParamSpec("P")
T = TypeVar("T")


class AsyncBuffer:
    """The buffer behind one dedicated thread: SQLite never blocks the event loop or a bus."""

    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")

    @classmethod
    async def open(cls, path: str, *, max_age: float, max_size: int, northbounds: int = MQTT) -> AsyncBuffer:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        buf = await asyncio.get_running_loop().run_in_executor(
            pool, lambda: Buffer(path, max_age=max_age, max_size=max_size, recover=True, northbounds=northbounds)
        )
        self = cls(buf)
        self._pool.shutdown()
        self._pool = pool
        return self

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def append(
        self,
        records: list[Record],
        events: Sequence[Event] = (),
        intervals: Sequence[Interval] = (),
        ledger: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> list[Row]:
        return await self._call(self._buffer.append, records, events, intervals, ledger)

    async def fetch(self, after: int, limit: int, northbound: int | None = None) -> list[Row]:
        return await self._call(self._buffer.fetch, after, limit, northbound)

    async def delete(self, seqs: list[int]) -> None:
        """Rows the MQTT broker acknowledged."""
        await self._call(self._buffer.delete, seqs)

    async def release(self, northbounds: int) -> int:
        return await self._call(self._buffer.release, northbounds)

    async def datacenter_compact(self, closed_end: int, period: int) -> int:
        return await self._call(self._buffer.datacenter_compact, closed_end, period)

    async def datacenter_periods(self, closed_end: int, period: int, limit: int) -> list[tuple[int, list[Row], bool]]:
        return await self._call(self._buffer.datacenter_periods, closed_end, period, limit)

    async def datacenter_sent(self, ends: list[int]) -> None:
        await self._call(self._buffer.datacenter_sent, ends)

    async def datacenter_done(self, end: int, seqs: list[int]) -> None:
        await self._call(self._buffer.datacenter_done, end, seqs)

    async def last_seq(self) -> int:
        """The seq of the newest stored message (0 before the first)."""
        return await self._call(lambda: self._buffer.next_seq - 1)

    async def depth(self, northbound: int | None = None) -> int:
        return await self._call(self._buffer.depth, northbound)

    async def rows(self) -> list[Row]:
        return await self._call(lambda: list(self._buffer.rows()))

    async def ledger(self) -> list[tuple[str, str, dict[str, Any]]]:
        return await self._call(self._buffer.ledger)

    async def enforce_retention(self, keep: Collection[int] = ()) -> list[Row]:
        return await self._call(self._buffer.enforce_retention, keep=keep)

    async def stats(self) -> dict[str, Any]:
        return await self._call(self._buffer.stats)

    async def close(self) -> None:
        await self._call(self._buffer.close)
        self._pool.shutdown(wait=True)


_ISO: dict[int, str] = {}  #: unix second -> "2026-12-02T06:00:00" (every reading of a slot shares it)


def _second_iso(second: int) -> str:
    text = _ISO.get(second)
    if text is None:
        if len(_ISO) > 4096:
            _ISO.clear()
        text = _ISO[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text


def seconds_iso(slot: int) -> str:
    return _second_iso(slot) + "Z"


def ms_iso(ts_ms: int) -> str:
    second, ms = divmod(ts_ms, 1000)
    return f"{_second_iso(second)}.{ms:03d}Z"


def finite(values: dict[str, float]) -> dict[str, float]:
    if all(map(math.isfinite, values.values())):
        return values  # always, from the meters: a NaN never gets this far (the codec refuses it)
    return {k: v for k, v in values.items() if math.isfinite(v)}
