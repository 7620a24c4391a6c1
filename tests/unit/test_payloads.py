"""Payloads rendered from buffered rows match the contract's schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.daemon.buffer import Buffer
from collector.daemon.payloads import Topics, message
from collector.daemon.records import Record
from tests.schemas import validate

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def test_reading_partial_unsynced_and_retention_event(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", max_age=3600)
    b.append(
        [
            Record(
                "main-incomer",
                NOW,
                NOW + timedelta(milliseconds=412),
                {"energy_import": 15321.07},
                "partial",
                {"frequency": "not available (meter sent 0x7FC00000)"},
                synced=False,
            )
        ]
    )
    topics = Topics("meters", "tinghu-b01-gw1")
    rows = b.fetch(0, 10) + b.enforce_retention(now=NOW.timestamp() + 7200)
    rendered = [message(r, "tinghu-b01-gw1", topics) for r in rows]
    topic, payload = rendered[0]
    body = json.loads(payload)
    assert topic == "meters/tinghu-b01-gw1/meters/main-incomer/reading"
    assert body == {
        "v": 1,
        "gateway": "tinghu-b01-gw1",
        "meter": "main-incomer",
        "seq": 1,
        "ts": "2026-11-27T08:00:00.412Z",
        "slot": "2026-11-27T08:00:00Z",
        "quality": "partial",
        "values": {"energy_import": 15321.07},
        "errors": {"frequency": "not available (meter sent 0x7FC00000)"},
        "clock": "unsynced",
    }
    names = [validate(t, json.loads(p)) for t, p in rendered]
    assert names == ["reading", "event"]
    assert json.loads(rendered[-1][1])["event"] == "data_dropped"
