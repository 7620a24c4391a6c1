"""The national uplink in the daemon (issue 12): the real daemon process, the project's simulator and
a data centre of our own (tests/uplink/datacenter.py) in the test process. Periods of 2 s, polls
every second; every wait has a deadline."""

from __future__ import annotations

import itertools
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema

from collector.daemon.control import ask
from collector.daemon.datacenter import period_end
from collector.uplink.messages import Query
from tests.conftest import Simulator, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, buffered, site_config, stored
from tests.integration.datacenter_parts import (
    BUILDING,
    GATEWAY,
    DataCenterThread,
    key_file,
    section,
    waiting_for_datacenter,
)
from tests.mqtt_parts import Mosquitto, Subscriber
from tests.schemas import schema, validate
from tests.uplink.datacenter import Record

PERIOD = 2.0


def sdm120s(simulator: type[Simulator], n: int) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def energy(records: list[Record], meter: str = "1", operation: str | None = None) -> dict[float, float]:
    """Period (unix seconds) -> the import energy the data centre holds for one meter."""
    return {
        r.time.timestamp(): float(r.value)
        for r in records
        if r.meter == meter and r.function == "1" and r.value is not None and operation in (None, r.operation)
    }


def holes(periods: list[float]) -> list[tuple[float, float]]:
    """Consecutive held periods further apart than two periods."""
    return [(a, b) for a, b in itertools.pairwise(sorted(periods)) if b - a > 2 * PERIOD]


def test_a_collector_with_only_a_datacenter_reports_to_it(tmp_path: Path, simulator: type[Simulator]) -> None:
    dc = DataCenterThread()
    config = site_config(
        tmp_path,
        mqtt_url=None,
        sim_port=sdm120s(simulator, 2),
        meters=2,
        datacenter=section(dc.port, key_file(tmp_path)),
    )
    web = free_port()
    config.write_text(config.read_text() + f"web: {{listen: 127.0.0.1:{web}}}\n")
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: len(energy(dc.records(), "2")) >= 2, 30, "two periods of meter 2 at the data centre")
        page = urllib.request.urlopen(f"http://127.0.0.1:{web}/", timeout=10).read().decode()
        assert "Data centre" in page and "MQTT" not in page
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10).read().decode()
        assert "meter_collector_datacenter_online 1.0" in metrics and "mqtt_connected" not in metrics
        rec = next(r for r in dc.records() if r.function == "1")
        assert (rec.building_id, rec.gateway_id, rec.coding, rec.operation) == (BUILDING, GATEWAY, "01A00", "report")
        assert {r.meter for r in dc.records()} == {"1", "2"}
        assert all(v > 0 for v in energy(dc.records()).values())
        # Functions of the default table (collector/uplink/functions.py): energy, power, voltage.
        assert {r.function for r in dc.records() if r.meter == "1"} == {"1", "8", "5"}
        # A query is answered with a fresh read of every meter.
        dc.push(Query())
        wait_until(lambda: {r.meter for r in dc.records() if r.operation == "reply"} == {"1", "2"}, 15, "a reply")
        health = ask(str(tmp_path / "buffer.db"), {"command": "status"})["health"]
        assert "mqtt" not in health
        jsonschema.validate(health, schema("health"))
        up = health["datacenter"]
        assert up["state"] == "online" and up["acked"] >= 2 and up["clock_offset_s"] is not None
        assert d.term() == 0
    finally:
        d.finish()
        dc.close()
    log = d.log()
    assert "data centre login passed" in log and "Traceback" not in log


def test_a_20_second_outage_arrives_as_continuous_packets(tmp_path: Path, simulator: type[Simulator]) -> None:
    dc = DataCenterThread()
    config = site_config(
        tmp_path,
        mqtt_url=None,
        sim_port=sdm120s(simulator, 1),
        meters=1,
        datacenter=section(dc.port, key_file(tmp_path)),
    )
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: len(energy(dc.records())) >= 2, 30, "reports before the outage")
        dc.away()
        away_at = time.time()
        time.sleep(20)  # the outage itself (10 periods): the daemon goes on polling and storing
        # One row per meter and period waits, not one per poll (the buffer keeps the period's last).
        closed = int((time.time() - away_at) // PERIOD) - 2
        assert closed - 2 <= len(waiting_for_datacenter(tmp_path / "buffer.db")) <= closed + 4
        dc.back()
        back_at = time.time()

        def missed() -> list[float]:
            return [t for t in energy(dc.records(), operation="continuous") if away_at < t < back_at]

        def all_there() -> bool:  # the backlog goes out after the fresh report: wait for all of it
            return len(missed()) >= 8 and not holes([t for t in energy(dc.records()) if t > away_at - 4 * PERIOD])

        wait_until(all_there, 40, "the periods of the outage as continuous packets")
        wait_until(lambda: max(energy(dc.records()), default=0) > back_at + PERIOD, 20, "fresh reports")
        assert d.term() == 0
    finally:
        d.finish()
        dc.close()
    held = energy(dc.records())
    assert not holes([t for t in held if t > away_at - 4 * PERIOD]), holes(list(held))
    log = d.log()
    # The loss is logged once, not at each attempt.
    assert log.count("connect to 127.0.0.1") == 1, log
    assert "Traceback" not in log


def test_a_wrong_key_is_logged_as_refused_and_polling_goes_on(tmp_path: Path, simulator: type[Simulator]) -> None:
    dc = DataCenterThread(login_key=b"another-key")
    config = site_config(
        tmp_path,
        mqtt_url=None,
        sim_port=sdm120s(simulator, 1),
        meters=1,
        datacenter=section(dc.port, key_file(tmp_path)),
    )
    db = tmp_path / "buffer.db"
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: len(dc.dc.logins) >= 3, 30, "three login attempts")
        first = buffered(db)
        wait_until(lambda: len(buffered(db) - first) >= 2, 15, "readings stored while refused")
        health = ask(str(db), {"command": "status"})["health"]
        assert health["datacenter"]["state"] == "refused"
        assert d.term() == 0
    finally:
        d.finish()
        dc.close()
    assert not any(dc.dc.logins) and not dc.records()
    log = d.log()
    assert log.count("data centre refused the login") == 1, log
    assert "0000000000123456" not in log


def test_both_northbounds_the_datacenter_down_while_mqtt_delivers(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    dc = DataCenterThread()
    dc.away()  # away from the start
    sub = Subscriber(broker.port, "meters/gw1/#")
    db = tmp_path / "buffer.db"
    config = site_config(
        tmp_path,
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        sim_port=sdm120s(simulator, 2),
        meters=2,
        datacenter=section(dc.port, key_file(tmp_path)),
    )
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 24, 30, "MQTT delivers while the data centre is away")
        # MQTT has them all, the data centre none: the buffer keeps one row per meter and period for it.
        waiting = waiting_for_datacenter(db)
        assert waiting and all(seq in buffered(db) for seq, _, _ in waiting)
        mqtt_seqs = set(sub.seqs())
        assert len([s for s in mqtt_seqs if s in buffered(db)]) <= len(waiting) + 8
        first = min(period_end(slot, PERIOD) for _, _, slot in waiting)
        dc.back()
        back_at = time.time()

        def caught_up() -> bool:
            held = sorted(t for t in energy(dc.records(), "2") if t >= first)
            return bool(held) and held[0] == first and held[-1] > back_at and not holes(held)

        wait_until(caught_up, 30, "the data centre catches up")

        def online() -> list[dict[str, Any]]:
            return [h for h in sub.json("/health") if h.get("datacenter", {}).get("state") == "online"]

        health = wait_until(online, 10, "health with the data centre online")[-1]
        validate("meters/gw1/health", health)
        assert health["mqtt"]["connected"] and health["datacenter"]["acked"] > 0
        assert d.term() == 0
        sub.wait_offline()
    finally:
        d.finish()
        dc.close()
        sub.close()
    assert len(energy(dc.records(), "1", "continuous")) >= 3
    # What both have is gone; what is left waits for the data centre only (the periods not yet closed).
    remaining, integrity = stored(db)
    assert integrity == "ok"
    assert {seq for seq, _, _ in waiting_for_datacenter(db)} == remaining
    assert len(remaining) <= 2 * (int(PERIOD) + 3)
    seqs = sorted(set(sub.seqs()))
    assert seqs == list(range(1, seqs[-1] + 1))  # MQTT got every seq, unaffected


def test_sigkill_mid_backlog_loses_nothing_for_the_datacenter(tmp_path: Path, simulator: type[Simulator]) -> None:
    dc = DataCenterThread()
    db = tmp_path / "buffer.db"
    config = site_config(
        tmp_path,
        mqtt_url=None,
        sim_port=sdm120s(simulator, 1),
        meters=1,
        datacenter=section(dc.port, key_file(tmp_path)),
    )
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: energy(dc.records()), 30, "a first report")
        dc.away()
        wait_until(lambda: len(waiting_for_datacenter(db)) >= 5, 30, "a backlog of five periods")
        d.kill()
        periods = {-(-slot // int(PERIOD)) * int(PERIOD) for _, _, slot in waiting_for_datacenter(db)}
        dc.back()
        d = DaemonProcess(config, tmp_path / "daemon.log")
        wait_until(lambda: periods <= set(energy(dc.records())), 40, "every stored period at the data centre")
        assert d.term() == 0
    finally:
        d.finish()
        dc.close()
