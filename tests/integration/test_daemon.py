"""The daemon end to end: real simulator, real Mosquitto, real SIGKILL, a cut uplink."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from tests.conftest import PtyPair, Simulator, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, buffered, site_config, stored
from tests.mqtt_parts import Mosquitto, Proxy, Subscriber
from tests.schemas import validate


def sdm120s(simulator: type[Simulator], n: int = 5) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def assert_gap_free(seqs: list[int]) -> None:
    unique = sorted(set(seqs))
    assert unique, "nothing arrived"
    assert unique == list(range(1, unique[-1] + 1)), f"gaps: {sorted(set(range(1, unique[-1] + 1)) - set(unique))}"


def at_least(n: int, seqs: set[int]) -> set[int]:
    """``seqs`` if it has n or more, else empty (for ``wait_until``)."""
    return seqs if len(seqs) >= n else set()


def utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


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
        sub.wait_offline()
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
    d: DaemonProcess | None = None
    try:
        for _ in range(2):
            d = DaemonProcess(config, tmp_path / "daemon.log")

            # Kill it while it polls: once it has committed a few new readings, not after a fixed time.
            def three_new(old: frozenset[int] = frozenset(stored_before)) -> set[int]:
                return at_least(3, buffered(db) - old)

            committed = wait_until(three_new, 30, "3 new stored readings")
            d.kill()
            seqs, integrity = stored(db)
            assert integrity == "ok"
            assert committed <= seqs, f"committed readings lost by SIGKILL: {sorted(committed - seqs)}"
            stored_before |= seqs
        proxy.restore()
        d = DaemonProcess(config, tmp_path / "daemon.log")
        sub.wait_for(lambda: stored_before <= set(sub.seqs()), 40, "every stored reading")
        # Then a reading the restarted daemon polled itself: the backlog does not block fresh ones.
        sub.wait_for(lambda: max(sub.seqs()) > max(stored_before), 20, "a fresh reading after the backlog")
        assert d.term() == 0
        sub.wait_offline()
    finally:
        if d is not None:
            d.finish()
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
        sub.wait_offline()
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
    payload = next(p for t, p, _ in sub.messages if t.endswith("/reading"))

    def not_json(token: str) -> float:
        raise AssertionError(f"{token} is not JSON (RFC 8259 has no NaN or Infinity): {payload!r}")

    r = json.loads(payload, parse_constant=not_json)
    assert set(r) == {"v", "gateway", "meter", "seq", "ts", "slot", "quality", "values"}
    assert r["v"] == 1 and r["gateway"] == "gw1" and r["meter"] == "m1" and r["quality"] == "good"
    assert type(r["seq"]) is int and r["seq"] >= 1
    # slot: the whole second the 1 s poll belongs to; ts: when it was read, to the millisecond. Both UTC.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["slot"]), r["slot"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]), r["ts"]
    assert utc(r["ts"]) >= utc(r["slot"]), (r["ts"], r["slot"])
    assert set(r["values"]) == {"energy_import", "active_power", "voltage_l1"}
    # Plain JSON numbers: not strings, not booleans, finite.
    bad = {k: v for k, v in r["values"].items() if type(v) not in (int, float) or not math.isfinite(v)}
    assert not bad, f"values that are not finite numbers: {bad}"


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
        # The daemon starts, cannot reach the broker, and polls into its buffer all the same.
        wait_until(lambda: "MQTT cannot connect" in d.log(), 20, '"MQTT cannot connect" in the log')
        polled_offline = wait_until(lambda: at_least(4, buffered(tmp_path / "buffer.db")), 20, "4 readings stored")
        assert not sub.json("/reading")
        proxy.restore()
        sub.wait_for(
            lambda: polled_offline <= set(sub.seqs()) and len(sub.json("/reading")) >= 8,
            30,
            "the readings stored offline and fresh ones once the uplink is up",
        )
        assert d.term() == 0
    finally:
        d.finish()
        proxy.close()
        sub.close()
    assert "MQTT cannot connect" in d.log()
    assert_gap_free(sub.seqs())


def test_points_a_meter_lacks_are_named_in_meta_and_readings_stay_good(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator], pty_pair: PtyPair
) -> None:
    lacks = ["voltage_l2", "voltage_l3", "current_l2", "current_l3"]
    simulator("--model", "dlt645-2007", "--serial", pty_pair.a, "--ids", "000000000001", "--absent", ",".join(lacks))
    config = tmp_path / "site.yaml"
    config.write_text(
        f"gateway: {{id: gw1}}\nstorage: {{path: {tmp_path / 'buffer.db'}}}\n"
        f'mqtt: {{url: "mqtt://127.0.0.1:{broker.port}"}}\nclock: {{sync_check: none}}\nbuses:\n'
        f"  - {{name: rs485, type: dlt645, port: {pty_pair.b}, baudrate: 9600, parity: N, timeout: 500ms}}\n"
        'meters:\n  - {id: office, bus: rs485, address: "000000000001", model: dlt645-2007, interval: 1s}\n'
    )
    sub = Subscriber(broker.port, "meters/gw1/#")
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: any(m["absent"] for m in sub.json("/meta")) and len(sub.json("/reading")) >= 3, 30, "meta")
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
    for topic, payload, _ in sub.messages:
        validate(topic, json.loads(payload))
    meta = sub.json("/meta")
    assert meta[0]["absent"] == {}  # on connect, before the first read: nothing known yet
    learned = next(m for m in meta if m["absent"])
    assert sorted(learned["absent"]) == sorted(lacks) and all("02H" in why for why in learned["absent"].values())
    assert not set(lacks) & set(learned["points"]) and "voltage_l1" in learned["points"]
    readings = sub.json("/reading")
    assert all(r["quality"] == "good" and "errors" not in r for r in readings), readings[0]
    assert all(not set(lacks) & set(r["values"]) and "energy_import" in r["values"] for r in readings)
