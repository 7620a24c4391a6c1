"""The outbox with two northbounds (buffer schema 4): the pending mask, the migration of a schema-3
file, the data centre's periods (compacted to one reading per meter, resent as continuous, cleared
by its ack) and the ReportSource over them (collector/daemon/datacenter.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from collector.config import load_config
from collector.daemon.buffer import DATACENTER, MQTT, AsyncBuffer, Buffer
from collector.daemon.calibration import Reading
from collector.daemon.datacenter import OutboxReports, period_end
from collector.daemon.records import Event, Interval, Record

T0 = 1_796_000_000  #: a multiple of 5 and of 60 (unix seconds)


def rec(meter: str, slot: int, energy: float, quality: str = "good") -> Record:
    at = datetime.fromtimestamp(slot, UTC)
    values = {} if quality == "bad" else {"energy_import": energy, "active_power": 1.5}
    return Record(meter, at, at, values, quality, {"meter": "no reply"} if quality == "bad" else {})


def pending(path: Path) -> dict[int, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT seq, pending FROM outbox"))
    finally:
        conn.close()


def test_a_schema_3_file_with_rows_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path)
    b.append([rec("m1", T0, 1.0), rec("m1", T0 + 1, 2.0)], [Event("x")])
    # Back to schema 3 as the previous version left it: no pending column, no data-centre table.
    b.conn.executescript(
        "DROP INDEX outbox_datacenter; ALTER TABLE outbox DROP COLUMN pending; DROP TABLE datacenter_sent;"
        "UPDATE state SET value = 3 WHERE key = 'schema_version';"
    )
    b.close()
    b = Buffer(path, northbounds=MQTT | DATACENTER)
    assert b._state("schema_version", 0) == 4
    assert pending(path) == {1: MQTT, 2: MQTT, 3: MQTT}  # what was stored before went to MQTT only
    assert [r.seq for r in b.fetch(0, 10, MQTT)] == [1, 2, 3] and b.fetch(0, 10, DATACENTER) == []
    assert [r.seq for r in b.append([rec("m1", T0 + 2, 3.0)])] == [4]
    assert pending(path)[4] == MQTT | DATACENTER
    b.delete([1, 2, 3, 4])
    assert pending(path) == {4: DATACENTER}  # MQTT has it, the data centre not yet
    assert b.stats()["depth"] == 0 and b.stats()["datacenter_depth"] == 1 and b.stats()["rows"] == 1
    b.close()


def test_each_row_waits_for_the_northbounds_of_its_kind(tmp_path: Path) -> None:
    both = Buffer(tmp_path / "both.db", northbounds=MQTT | DATACENTER)
    iv = Interval("m1", "energy_import", T0, T0 + 900, 1.0, "kWh", "measured")
    rows = both.append([rec("m1", T0, 1.0)], [Event("x")], [iv])
    assert pending(tmp_path / "both.db") == {1: MQTT | DATACENTER, 2: MQTT, 3: MQTT}
    both.done([r.seq for r in rows], DATACENTER)
    assert pending(tmp_path / "both.db") == {1: MQTT, 2: MQTT, 3: MQTT}
    both.delete([1, 2, 3])
    assert both.depth() == 0
    # The data centre alone: events and interval consumption are nobody's, so not stored (no seq).
    dc = Buffer(tmp_path / "dc.db", northbounds=DATACENTER)
    rows = dc.append([rec("m1", T0, 1.0)], [Event("x")], [iv])
    assert [r.seq for r in rows] == [1] and dc.append([], [Event("y")]) == [] and dc.next_seq == 2
    # A northbound no longer configured: its rows are not waited for.
    both.append([rec("m1", T0 + 1, 1.0)])
    assert both.release(DATACENTER) == 0 and pending(tmp_path / "both.db") == {4: MQTT}
    assert both.release(MQTT) == 1 and both.depth() == 0


def test_a_closed_period_keeps_one_reading_per_meter(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", northbounds=DATACENTER)
    # Two periods of 5 s, (T0, T0+5] and (T0+5, T0+10], polled every second; m1's last poll failed.
    for s in range(1, 11):
        b.append([rec("m1", T0 + s, float(s), "bad" if s == 10 else "good"), rec("m2", T0 + s, 100.0 + s)])
    assert b.datacenter_compact(T0 + 5, 5) == 8  # the first period only: 4 of 5 per meter go
    assert b.datacenter_compact(T0 + 5, 5) == 0  # looked at once
    assert b.datacenter_compact(T0 + 10, 5) == 8
    periods = b.datacenter_periods(T0 + 10, 5, 10)
    assert [(end, sent) for end, _, sent in periods] == [(T0 + 5, False), (T0 + 10, False)]
    kept = {(r.meter, r.slot) for _, rows, _ in periods for r in rows}
    # m1 keeps its last reading with values (T0+9), not the failed poll at T0+10.
    assert kept == {("m1", T0 + 5), ("m2", T0 + 5), ("m1", T0 + 9), ("m2", T0 + 10)}
    assert b.depth(DATACENTER) == 4 and b.depth() == 4  # the others are deleted: nobody needs them
    assert period_end(T0 + 5, 5) == T0 + 5 and period_end(T0 + 5.5, 5) == T0 + 10


SITE = """
gateway: {id: gw1}
storage: {path: buffer.db}
datacenter: {url: "tcp://127.0.0.1:7201", building_id: "330100A001", gateway_id: "01", key_file: dc.key, period: 5s}
buses:
  - {name: lan, type: tcp, host: 127.0.0.1}
meters:
  - {id: m1, bus: lan, address: 1, model: eastron-sdm120, interval: 1s, category: "01A00",
     points: [energy_import, active_power]}
  - {id: m2, bus: lan, address: 2, model: eastron-sdm120, interval: 1s, category: "01B00", datacenter_id: 7,
     points: [energy_import, active_power], function_ids: {energy_import: "31"}}
"""


def test_the_report_source_over_the_outbox(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(SITE)
    config = load_config(tmp_path / "site.yaml", check_files=False)

    async def read_now(ids: list[str]) -> list[Reading]:
        at = datetime.fromtimestamp(T0, UTC)
        return [Reading(i, at, at, values={"energy_import": 5.0, "active_power": 0.5}) for i in ids]

    async def main() -> None:
        buf = await AsyncBuffer.open(str(tmp_path / "buffer.db"), max_age=86400, max_size=10**8, northbounds=DATACENTER)
        try:
            for s in range(1, 16):
                await buf.append([rec("m1", T0 + s, float(s)), rec("m2", T0 + s, 100.0 + s, "bad")])
            source = OutboxReports(buf, config, 5.0, read_now)
            source.closed_end = lambda now=None: T0 + 15  # type: ignore[method-assign]
            items = list(await source.pending(2))
            assert [(i.key, i.resend) for i in items] == [(T0 + 5, True), (T0 + 10, True)]  # older than the newest
            m1, m2 = items[0].meters
            assert (m1.id, m1.name, m2.id) == ("1", "m1", "7")
            assert [(f.id, f.coding, f.value) for f in m1.functions] == [("1", "01A00", 5.0), ("8", "01A00", 1.5)]
            assert [(f.id, f.value) for f in m2.functions] == [("31", None), ("8", None)]  # no reply: error_fault
            await source.acknowledged(items[0])
            newest = list(await source.pending(10))
            assert [(i.key, i.resend) for i in newest] == [(T0 + 10, True), (T0 + 15, False)]
            await source.acknowledged(newest[1])
            # Handed out once, the newest period is continuous from now on, across restarts.
            again = OutboxReports(buf, config, 5.0, read_now)
            again.closed_end = lambda now=None: T0 + 20  # type: ignore[method-assign]
            assert [(i.key, i.resend) for i in await again.pending(10)] == [(T0 + 10, True)]
            assert [f.value for m in await source.collect_now() for f in m.functions] == [5.0, 0.5, 5.0, 0.5]
            await source.period_changed(7)  # does not divide a day: ignored
            assert source.period == 5.0
            await source.period_changed(15)
            assert source.period == 900.0 and source.changed.is_set()
        finally:
            await buf.close()

    asyncio.run(main())
