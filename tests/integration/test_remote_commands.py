"""Read-only remote commands over MQTT 5 request/response (docs/platform-contract.md, "Commands"):
a real Mosquitto, a real daemon polling the simulator, and the platform's side written here, a paho
MQTT 5 client that sends requests with a Response Topic and Correlation Data."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.daemon import remote
from collector.daemon.control import READ_ONLY
from collector.daemon.payloads import Topics
from collector.daemon.publisher import Incoming
from tests.conftest import ROOT as ROOT_DIR
from tests.conftest import Simulator, free_port, wait_until, wait_until_async
from tests.integration.daemon_parts import DaemonProcess, site_config
from tests.mqtt_parts import Mosquitto, Proxy, Subscriber
from tests.schemas import schema, validate

ROOT = "meters/gw1"
REPLY = f"{ROOT}/reply/platform"
SECRET = "gw1-Secret-for-commands"


def utc(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Answer:
    topic: str
    body: dict[str, Any]
    content_type: str | None
    utf8: int | None


@dataclass
class Platform:
    """The platform's side: sends requests and keeps every answer on its reply topics, by Correlation Data."""

    port: int
    auth: tuple[str, str] | None = None
    name: str = "platform"
    answers: dict[bytes, Answer] = field(default_factory=dict)
    acks: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.name}-rr-{self.port}", protocol=mqtt.MQTTv5)
        if self.auth:
            c.username_pw_set(*self.auth)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{ROOT}/reply/#", qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: ready.set()
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        self.client = c
        if not ready.wait(10):
            raise RuntimeError("the platform client did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        answer = Answer(
            msg.topic,
            json.loads(msg.payload),
            getattr(props, "ContentType", None),
            getattr(props, "PayloadFormatIndicator", None),
        )
        with self.lock:
            self.answers[bytes(getattr(props, "CorrelationData", b""))] = answer

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.lock:
            self.acks[mid] = str(rc)

    def request(
        self, command: str, body: dict[str, Any] | bytes = b"", *, correlation: bytes, reply_to: str | None = REPLY
    ) -> int:
        """Publish a request (QoS 1); the message id whose PUBACK ``acks`` will hold."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if reply_to is not None:
            props.ResponseTopic = reply_to
        props.CorrelationData = correlation
        payload = json.dumps(body).encode() if isinstance(body, dict) else body
        mid: int = self.client.publish(f"{ROOT}/cmd/{command}", payload, qos=1, properties=props).mid
        return mid

    def ask(self, command: str, body: dict[str, Any] | bytes = b"", timeout: float = 15) -> Answer:
        correlation = f"{command}-{time.monotonic_ns()}".encode()
        self.request(command, body, correlation=correlation)
        return self.answer(correlation, timeout)

    def answer(self, correlation: bytes, timeout: float = 15) -> Answer:
        def got() -> Answer | None:
            with self.lock:
                return self.answers.get(correlation)

        answer = wait_until(got, timeout, f"the answer to {correlation!r}")
        assert answer is not None
        return answer

    def ack(self, mid: int, timeout: float = 10) -> str:
        def got() -> str | None:
            with self.lock:
                return self.acks.get(mid)

        reason = wait_until(got, timeout, f"the PUBACK of mid {mid}")
        assert reason is not None
        return reason

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def check_answer(body: dict[str, Any]) -> None:
    jsonschema.validate(body, schema("command-answer"))


@dataclass
class Gateway:
    daemon: DaemonProcess
    platform: Platform
    readings: Subscriber
    config: Path

    def slots(self, meter: str) -> list[float]:
        return [utc(r["slot"]) for r in self.readings.json("/reading") if r["meter"] == meter]


def sdm120s(simulator: type[Simulator], n: int = 2) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def start_gateway(
    folder: Path, broker_port: int, sim_port: int, *, mqtt_extra: str = "", platform_auth: tuple[str, str] | None = None
) -> Gateway:
    readings = Subscriber(broker_port, f"{ROOT}/#", auth=platform_auth)
    config = site_config(
        folder, mqtt_url=f"mqtt://127.0.0.1:{broker_port}", sim_port=sim_port, meters=2, mqtt_extra=mqtt_extra
    )
    daemon = DaemonProcess(config, folder / "daemon.log")
    platform = Platform(broker_port, platform_auth)
    # The daemon subscribes right after it connects, before it publishes a reading: once readings of
    # both meters are here, its subscription to cmd/+ is in place (one connection, in order).
    readings.wait_for(lambda: {"m1", "m2"} <= {r["meter"] for r in readings.json("/reading")}, 30, "readings")
    return Gateway(daemon, platform, readings, config)


@pytest.fixture
def gateway(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path, broker.port, sdm120s(simulator))
    yield gw
    gw.platform.close()
    gw.readings.close()
    gw.daemon.finish()


def test_read_answers_a_fresh_reading_that_is_not_stored(gateway: Gateway) -> None:
    p = gateway.platform
    correlation = b"\x00\xffread-m1\x80"  # not UTF-8: copied as bytes, unchanged
    asked_at = time.time()
    p.request("read", {"meter": "m1"}, correlation=correlation)
    answer = p.answer(correlation)
    assert answer.topic == REPLY
    assert answer.content_type == "application/json" and answer.utf8 == 1
    check_answer(answer.body)
    assert answer.body["ok"] is True and answer.body["command"] == "read", answer.body
    (reading,) = answer.body["readings"]
    assert reading["meter"] == "m1" and reading["quality"] == "good", reading
    assert {"energy_import", "active_power", "voltage_l1"} <= set(reading["values"])
    read_at = utc(reading["ts"])
    assert read_at > asked_at - 0.001, f"read at {reading['ts']}, asked at {asked_at}: not a fresh reading"
    # Not stored and published as a reading: one reading per meter and slot, none at the read's time.
    gateway.readings.wait_for(lambda: max(gateway.slots("m1")) >= read_at + 2, 15, "readings after the read")
    published = gateway.readings.json("/reading")
    for r in published:
        validate(f"{ROOT}/meters/{r['meter']}/reading", r)
    per_slot = Counter((r["meter"], r["slot"]) for r in published)
    assert max(per_slot.values()) == 1, [k for k, n in per_slot.items() if n > 1]
    assert reading["ts"] not in {r["ts"] for r in published if r["meter"] == "m1"}
    # raw: the hidden points and the meter's words too
    raw = p.ask("read", {"meter": "m2", "raw": True}).body
    check_answer(raw)
    assert raw["ok"] and "registers" in raw["readings"][0], raw


def test_writes_and_bad_requests_are_refused_with_the_reason(gateway: Gateway) -> None:
    p = gateway.platform
    for command in ("write", "set", "set_time"):
        body = p.ask(command, {"meter": "m1", "point": "energy_import", "value": 0}).body
        check_answer(body)
        assert body == {"ok": False, "command": command, "error": f'"{command}" refused: {READ_ONLY}'}
    refusals = {
        "not JSON": p.ask("read", b"{meter: m1").body,
        "must be a JSON object, not an array": p.ask("read", b'["m1"]').body,
        "unknown meter(s): nope": p.ask("read", {"meter": "nope"}).body,
        'unknown command "frobnicate"': p.ask("frobnicate").body,
    }
    for reason, body in refusals.items():
        check_answer(body)
        assert body["ok"] is False and reason in body["error"], body


def test_ping_and_status_are_answered(gateway: Gateway) -> None:
    ping = gateway.platform.ask("ping").body
    check_answer(ping)
    assert ping["ok"] and ping["gateway"] == "gw1" and ping["pid"] == gateway.daemon.proc.pid, ping
    status = gateway.platform.ask("status", {}).body
    check_answer(status)
    validate(f"{ROOT}/health", status["health"])
    assert status["health"]["commands"]["received"] == 2, status["health"]["commands"]
    assert set(status["health"]["meters"]) == {"m1", "m2"}


def test_a_flood_is_rate_limited_and_readings_keep_coming(gateway: Gateway) -> None:
    p = gateway.platform
    n = 400
    flood_at = time.time()
    correlations = [f"flood-{i}".encode() for i in range(n)]
    for c in correlations:
        p.request("ping", correlation=c)

    def counted() -> dict[str, int] | None:
        health = gateway.readings.json("/health")
        last = health[-1]["commands"] if health else {}
        return last if last.get("answered", 0) + last.get("dropped", 0) >= n else None

    stats = wait_until(counted, 30, f"health accounting for all {n} requests")
    assert stats is not None and stats["received"] == n, stats

    def answers() -> list[dict[str, Any]]:
        with p.lock:
            return [p.answers[c].body for c in correlations if c in p.answers]

    wait_until(lambda: len(answers()) == stats["answered"], 15, f"{stats['answered']} answers at the platform")
    answered = answers()
    ok = [a for a in answered if a["ok"]]
    limited = [a for a in answered if not a["ok"]]
    # 10 at once, then one every 2 s; "rate limited" answers are limited too, the rest are dropped.
    assert 1 <= len(ok) <= remote.BURST + (time.time() - flood_at) * remote.RATE + 1, len(ok)
    assert limited and all(a["error"].startswith("rate limited, retry after ") for a in limited), limited[:3]
    assert all(a["retry_after_s"] >= 1 for a in limited)
    for a in ok[:1] + limited[:1]:
        check_answer(a)
    assert stats["rate_limited"] == n - len(ok) and stats["dropped"] == n - len(answered) > 0, stats
    # Polling and publishing went on meanwhile: every 1 s slot of both meters, no hole.
    for meter in ("m1", "m2"):

        def after(m: str = meter) -> bool:
            return max(gateway.slots(m)) >= flood_at + 4

        gateway.readings.wait_for(after, 15, f"{meter} after the flood")
        slots = sorted(s for s in gateway.slots(meter) if s >= flood_at - 3)
        holes = [(a, b) for a, b in itertools.pairwise(slots) if b - a > 1]
        assert not holes, f"{meter}: slots missing during the flood: {holes}"
    assert "remote commands are being rate limited" in gateway.daemon.log()


def test_an_invalid_config_on_reload_is_refused_and_the_daemon_keeps_running(gateway: Gateway) -> None:
    before = gateway.platform.ask("ping").body
    text = gateway.config.read_text()
    gateway.config.write_text(text.replace("address: 2,", "address: 300,"))
    answer = gateway.platform.ask("reload").body
    check_answer(answer)
    assert answer["ok"] is False and "is not valid, the running config stays" in answer["error"], answer
    assert "300" in answer["error"] and "1..247" in answer["error"], answer
    after = gateway.platform.ask("ping").body
    assert after["pid"] == before["pid"] and after["uptime_s"] >= before["uptime_s"]  # not restarted
    polled = max(gateway.slots("m2"))
    gateway.readings.wait_for(lambda: max(gateway.slots("m2")) > polled + 1, 10, "readings after the reload")
    assert gateway.daemon.proc.poll() is None


def test_a_valid_reload_is_answered_before_the_daemon_restarts(gateway: Gateway) -> None:
    before = gateway.platform.ask("ping").body
    answer = gateway.platform.ask("reload").body
    check_answer(answer)
    assert answer == {"ok": True, "command": "reload", "reloading": str(gateway.config)}, answer
    wait_until(lambda: gateway.daemon.log().count("MQTT connected") == 2, 20, "the restarted pipeline's connect")
    # The restarted pipeline subscribed again; same process, new start.
    after = gateway.platform.ask("ping").body
    assert after["pid"] == before["pid"], (before, after)
    assert "reload asked through a command" in gateway.daemon.log()


def test_no_response_topic_is_counted_and_logged_once(gateway: Gateway) -> None:
    p = gateway.platform
    for i in range(3):
        p.ack(p.request("ping", correlation=f"lost-{i}".encode(), reply_to=None))
    p.ack(p.request("ping", correlation=b"elsewhere", reply_to="meters/gw1/meters/m1/reading"))
    stats = p.ask("status").body["health"]["commands"]
    # the status request itself is received, its answer not yet sent when the health was taken
    assert stats["received"] == 5 and stats["unanswerable"] == 4 and stats["answered"] == 0, stats
    log = gateway.daemon.log()
    assert log.count("has no MQTT 5 Response Topic") == 1, log
    assert "answers go only to topics under meters/gw1/reply/" in log
    assert not {b"lost-0", b"elsewhere"} & set(p.answers)


def test_commands_are_answered_after_a_reconnect(tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]) -> None:
    proxy = Proxy(broker.port)
    sim = sdm120s(simulator, 2)
    readings = Subscriber(broker.port, f"{ROOT}/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim, meters=2)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    platform = Platform(broker.port)
    try:
        readings.wait_for(lambda: readings.json("/reading"), 30, "readings")
        assert platform.ask("ping").body["ok"]
        proxy.cut()
        readings.wait_for(lambda: readings.json("/status")[-1]["state"] == "offline", 30, "the will: offline")
        proxy.restore()
        readings.wait_for(lambda: readings.json("/status")[-1]["state"] == "online", 30, "online again")
        # A clean start lost the session's subscription: the daemon subscribed again.
        assert platform.ask("ping").body["ok"]
    finally:
        platform.close()
        readings.close()
        d.finish()
        proxy.close()


def test_the_broker_acl_decides_who_may_send_commands(tmp_path: Path, simulator: type[Simulator]) -> None:
    (tmp_path / "b").mkdir()
    # docs/platform-contract.md, "Commands": the ACL as documented
    text = (ROOT_DIR / "docs" / "platform-contract.md").read_text()
    acl = text.split("**Authorisation is the broker's ACL**")[1].split("```")[1]
    assert "pattern write meters/%u/#" in acl and "user dashboard" in acl
    broker = Mosquitto(tmp_path / "b", users={"gw1": SECRET, "platform": "p", "dashboard": "d"}, acl=acl).start()
    secret = tmp_path / "mqtt.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    gw = start_gateway(
        tmp_path,
        broker.port,
        sdm120s(simulator),
        mqtt_extra=f", username: gw1, password_file: {secret}",
        platform_auth=("platform", "p"),
    )
    dashboard = Platform(broker.port, ("dashboard", "d"), name="dashboard")
    try:
        # MQTT 5: the broker says no to the dashboard's request, which never reaches the gateway.
        assert dashboard.ack(dashboard.request("ping", correlation=b"dashboard")) == "Not authorized"
        assert gw.platform.ask("ping").body["ok"]
        stats = gw.platform.ask("status").body["health"]["commands"]
        assert stats["received"] == 2, stats
        assert b"dashboard" not in dashboard.answers and b"dashboard" not in gw.platform.answers
    finally:
        dashboard.close()
        gw.platform.close()
        gw.readings.close()
        gw.daemon.finish()
        broker.stop()


def test_mqtt_3_1_1_does_not_subscribe_and_says_commands_need_mqtt_5(
    tmp_path: Path, broker: Mosquitto, simulator: type[Simulator]
) -> None:
    gw = start_gateway(tmp_path, broker.port, sdm120s(simulator), mqtt_extra=', protocol: "3.1.1"')
    try:
        gw.readings.close()  # it subscribes to meters/gw1/#, cmd/ too
        # Nobody subscribes to cmd/: Mosquitto says so in the PUBACK (MQTT 5 reason 16).
        assert gw.platform.ack(gw.platform.request("ping", correlation=b"x")) == "No matching subscribers"
        log = gw.daemon.log()
        assert log.count("need MQTT 5") == 1 and 'mqtt.protocol is "3.1.1"' in log, log
    finally:
        gw.platform.close()
        gw.daemon.finish()


# -- the MQTT glue alone, with a fake link and a command table that waits when told ----------------


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bytes | None]] = []
        self.handler: Any = None

    def subscribe(self, topic_filter: str, handler: Any) -> None:
        self.handler = handler

    def publish_direct(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool:
        assert qos == 1 and not retain and content_type == "application/json"
        self.sent.append((topic, json.loads(payload), correlation_data))
        return True


class SlowCommands:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def handle(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        await self.release.wait()
        return {"ok": True, "command": command}


def test_token_bucket() -> None:
    now = [100.0]
    b = remote.TokenBucket(10, 0.5, clock=lambda: now[0])
    assert [b.take() for _ in range(10)] == [0.0] * 10
    assert b.take() == 2.0
    now[0] += 2.0
    assert b.take() == 0.0 and b.take() == 2.0
    assert b.take(5) == 10.0  # a reload's cost, from an empty bucket


def test_one_read_of_a_meter_at_a_time_and_what_cannot_be_answered(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        link, commands = FakeLink(), SlowCommands()
        rc = remote.RemoteCommands(commands, link, Topics("meters", "gwx"), "5", ["m1", "m2"])
        rc.start()
        reply = "meters/gwx/reply/p"

        def send(cmd: str, body: bytes, corr: bytes, reply_to: str | None = reply, retained: bool = False) -> None:
            link.handler(Incoming(f"meters/gwx/cmd/{cmd}", body, retained, reply_to, corr))

        send("read", b'{"meter": "m1"}', b"1")
        send("read", b"", b"2")  # every meter: m1 among them, still being read
        send("read", b'{"meter": "m2"}', b"3")
        assert [(c, a["error"]) for _, a, c in link.sent] == [
            (b"2", "rate limited, retry after 1 s (a read of m1 is still running)")
        ]
        for _ in range(2):
            send("ping", b"", b"x", reply_to=None)
        send("ping", b"", b"y", reply_to="meters/gwx/cmd/ping")  # its own cmd/: would loop
        send("reload", b"", b"z", retained=True)
        commands.release.set()
        await wait_until_async(lambda: len(link.sent) == 3, 5, "the two reads answered")
        assert {c for _, a, c in link.sent if a["ok"]} == {b"1", b"3"}
        send("read", b'{"meter": "m1"}', b"4")  # m1 is free again
        await wait_until_async(lambda: len(link.sent) == 4, 5, "the next read answered")
        assert rc.stats == remote.CommandStats(
            received=8, answered=4, refused=1, rate_limited=1, unanswerable=4, dropped=0
        )
        await rc.stop()

    with caplog.at_level(logging.WARNING, logger="collector.daemon.remote"):
        asyncio.run(go())
    said = [r.getMessage() for r in caplog.records]
    assert sum("no MQTT 5 Response Topic" in s for s in said) == 1, said
    assert any("retained" in s for s in said) and any("answers go only to topics under" in s for s in said)
