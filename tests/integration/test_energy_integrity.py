"""Billing-grade counters through the real daemon, and the writer's one-transaction bookkeeping."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from collector.config import load_config
from collector.daemon.buffer import AsyncBuffer
from collector.daemon.calibration import Reading
from collector.daemon.counters import Ledger
from collector.daemon.payloads import Topics, message
from collector.daemon.records import KIND_INTERVAL
from collector.daemon.writer import Writer
from tests.conftest import Simulator, free_port
from tests.integration.daemon_parts import DaemonProcess, site_config
from tests.mqtt_parts import Mosquitto, Subscriber
from tests.schemas import validate


def test_a_register_reading_0_every_fourth_poll_never_reaches_the_platform(
    tmp_path: Path, simulator: type[Simulator]
) -> None:
    sim = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{sim}", "--ids", "1", "--zero-every", "4")
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sub = Subscriber(broker.port, "meters/gw1/#")
    d = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=1),
        tmp_path / "daemon.log",
    )
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 16, 30, "16 readings")
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
        broker.stop()
    readings = sorted(sub.json("/reading"), key=lambda r: r["seq"])
    energy = [r["values"]["energy_import"] for r in readings if "energy_import" in r["values"]]
    assert energy == sorted(energy) and all(e > 0 for e in energy)
    marked = [r for r in readings if "energy_import" in r.get("errors", {})]
    assert len(marked) >= 3 and all("held back" in r["errors"]["energy_import"] for r in marked)
    assert all(r["quality"] == "partial" and "active_power" in r["values"] for r in marked), [
        (r["quality"], r["values"]) for r in marked
    ]
    assert len(energy) + len(marked) == len(readings)
    assert not [e for e in sub.json("/events") if e["event"] == "counter_reset"]  # glitches, not resets


def test_the_writer_stores_readings_intervals_and_counter_state_together(tmp_path: Path) -> None:
    config_path = tmp_path / "site.yaml"
    site_config(tmp_path, mqtt_url="mqtt://127.0.0.1:1", sim_port=1, meters=1)
    config = load_config(config_path)
    meter = config.meter("m1")
    t0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC).timestamp()

    async def go() -> list[dict[str, object]]:
        buf = await AsyncBuffer.open(str(tmp_path / "w.db"), max_age=86400 * 365, max_size=10**9)
        writer = Writer(buf, lambda rows: None, "none", config, Ledger(config.consumption_interval))
        for i in range(7):  # every 5 min for 30 min: two 15-min intervals
            t = datetime.fromtimestamp(t0 + i * 300, UTC)
            writer.reading(Reading(meter.id, t, t, values={"energy_import": 100.0 + i, "active_power": 12.0}))
        await writer.flush()
        rows = await buf.rows()
        ledger = await buf.ledger()
        await buf.close()
        assert ledger[0][:2] == ("m1", "energy_import") and ledger[0][2]["last_r"] == 106.0
        topics = Topics("meters", "gw1")
        out = []
        for r in rows:
            if r.kind == KIND_INTERVAL:
                topic, payload = message(r, "gw1", topics)
                body = json.loads(payload)
                validate(topic, body)
                out.append(body)
        return out

    intervals = asyncio.run(go())
    assert [(i["start"], i["end"], i["delta"], i["quality"]) for i in intervals] == [
        ("2026-11-27T08:00:00Z", "2026-11-27T08:15:00Z", 3.0, "measured"),
        ("2026-11-27T08:15:00Z", "2026-11-27T08:30:00Z", 3.0, "measured"),
    ]
    assert intervals[0]["point"] == "energy_import" and intervals[0]["unit"] == "kWh"
