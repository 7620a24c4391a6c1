"""The daemon end to end: real simulator, real Mosquitto, real SIGKILL, a cut uplink."""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import Simulator, free_port
from tests.integration.daemon_parts import DaemonProcess, site_config, stored
from tests.mqtt_parts import Mosquitto, Proxy, Subscriber
from tests.schemas import validate


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def sdm120s(simulator: type[Simulator], n: int = 5) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def assert_gap_free(seqs: list[int]) -> None:
    unique = sorted(set(seqs))
    assert unique, "nothing arrived"
    assert unique == list(range(1, unique[-1] + 1)), f"gaps: {sorted(set(range(1, unique[-1] + 1)) - set(unique))}"


def slots_by_meter(sub: Subscriber) -> dict[str, list[float]]:
    out: dict[str, set[float]] = defaultdict(set)
    for r in sub.json("/reading"):
        out[r["meter"]].add(datetime.fromisoformat(r["slot"].replace("Z", "+00:00")).timestamp())
    return {m: sorted(s) for m, s in out.items()}


def test_a_12_second_uplink_cut_loses_nothing(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> None:
    sim_port = sdm120s(simulator)
    proxy = Proxy(broker.port)
    sub = Subscriber(broker.port, "meters/gw1/#")
    daemon = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port), tmp_path / "daemon.log"
    )
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 10, 20, "readings before the cut")
        proxy.cut()
        cut_at = time.time()
        time.sleep(12)
        proxy.restore()
        restored_at = time.time()
        # Everything polled during the cut must arrive once the link is back.
        sub.wait_for(
            lambda: any(
                r["slot"] and datetime.fromisoformat(r["slot"].replace("Z", "+00:00")).timestamp() > restored_at + 2
                for r in sub.json("/reading")
            ),
            45,
            "readings after the cut",
        )
        assert daemon.term() == 0
        time.sleep(0.5)
    finally:
        daemon.finish()
        proxy.close()
        sub.close()
    log = daemon.log()
    assert "MQTT connection lost" in log
    assert_gap_free(sub.seqs())
    slots = slots_by_meter(sub)
    assert set(slots) == {f"m{i}" for i in range(1, 6)}
    for meter, ss in slots.items():
        during = [s for s in ss if cut_at < s < restored_at]
        assert len(during) >= 11, f"{meter}: only {len(during)} readings from the 12 s cut arrived"
        holes = [(a, b) for a, b in itertools.pairwise(ss) if b - a > 1]
        assert not holes, f"{meter}: slots missing between {holes}"
    remaining, integrity = stored(tmp_path / "buffer.db")
    assert remaining == set() and integrity == "ok"


def test_sigkill_twice_while_polling_loses_no_stored_reading(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    sim_port = sdm120s(simulator)
    proxy = Proxy(broker.port)
    proxy.cut()  # the uplink is down: everything polled stays in the buffer
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port)
    db = tmp_path / "buffer.db"
    stored_before: set[int] = set()
    try:
        for _ in range(2):
            d = DaemonProcess(config, tmp_path / "daemon.log")
            time.sleep(3.2)
            d.kill()
            seqs, integrity = stored(db)
            assert integrity == "ok"
            assert seqs - stored_before, "the daemon stored nothing before it was killed"
            stored_before |= seqs
        proxy.restore()
        d = DaemonProcess(config, tmp_path / "daemon.log")
        sub.wait_for(lambda: stored_before <= set(sub.seqs()), 40, "every stored reading")
        time.sleep(1.5)
        assert d.term() == 0
    finally:
        proxy.close()
        sub.close()
    assert_gap_free(sub.seqs())
    remaining, integrity = stored(db)
    assert integrity == "ok" and remaining == set()


def test_status_meta_health_and_a_dead_meter_event(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    sim_port = sdm120s(simulator, 2)
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, meters=3)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        sub.wait_for(
            lambda: sub.json("/events") and any(h["meters"]["m3"]["skipped_backoff"] >= 2 for h in sub.json("/health")),
            30,
            "health and events",
        )
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
    # Every payload the daemon really sent matches the contract's JSON Schema.
    kinds = {validate(topic, json.loads(payload)) for topic, payload, _ in sub.messages}
    assert kinds == {"reading", "event", "status", "meta", "health"}
    status = sub.json("/status")
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"
    meta = {m["meter"]: m for m in sub.json("/meta")}
    assert meta["m1"]["points"]["energy_import"] == {"unit": "kWh", "nature": "counter"}
    assert meta["m1"]["category"] == "01A00" and meta["m1"]["building"] == "B01"
    events = sub.json("/events")
    assert events[0]["event"] == "meter_offline" and events[0]["meter"] == "m3"
    health = next(h for h in sub.json("/health") if h["meters"]["m3"]["skipped_backoff"] >= 2)
    assert health["meters"]["m3"]["online"] is False and health["meters"]["m1"]["good"] > 0
    assert d.log().count('meter "m3" on bus "lan" unavailable') == 1  # logged once, not every poll
    bad = [r for r in sub.json("/reading") if r["meter"] == "m3"]
    assert all(r["quality"] == "bad" and r["values"] == {} for r in bad)
    # A dead meter backs off: fewer attempts than slots. Two skipped slots make this hold even while
    # m1's poll of the current slot is still running when the health message is taken.
    assert health["meters"]["m3"]["polls"] < health["meters"]["m1"]["polls"]


def test_payload_shapes(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> None:
    sim_port = sdm120s(simulator, 1)
    sub = Subscriber(broker.port, "meters/gw1/#")
    d = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim_port, meters=1),
        tmp_path / "daemon.log",
    )
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 20, "readings")
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
    r = sub.json("/reading")[0]
    assert set(r) == {"v", "gateway", "meter", "seq", "ts", "slot", "quality", "values"}
    assert r["v"] == 1 and r["gateway"] == "gw1" and r["quality"] == "good"
    assert r["slot"].endswith(":00Z") or r["slot"].endswith("Z")
    assert r["ts"] >= r["slot"].replace("Z", ".000Z")
    assert set(r["values"]) == {"energy_import", "active_power", "voltage_l1"}
    assert json.dumps(r)  # plain JSON types


def test_network_down_at_boot(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> None:
    sim_port = sdm120s(simulator, 2)
    proxy = Proxy(broker.port)
    proxy.cut()  # the uplink is not there when the daemon starts
    sub = Subscriber(broker.port, "meters/gw1/#")
    d = DaemonProcess(
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port, meters=2),
        tmp_path / "daemon.log",
    )
    try:
        time.sleep(3)
        assert not sub.json("/reading")
        proxy.restore()
        sub.wait_for(lambda: len(sub.json("/reading")) >= 8, 30, "readings once the uplink is up")
        assert d.term() == 0
    finally:
        d.finish()
        proxy.close()
        sub.close()
    assert "MQTT cannot connect" in d.log()
    assert_gap_free(sub.seqs())
