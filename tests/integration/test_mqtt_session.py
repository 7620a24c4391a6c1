"""The MQTT session alone, against a real Mosquitto and without a buffer: it connects, says
"online", delivers what it is given, reports each PUBACK by message id, and comes back after the
broker restarts. The delivery window is not here: a recorder takes its place as ``SessionEvents``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from collector.config import Mqtt
from collector.daemon.publisher import MqttSession
from tests.conftest import wait_until_async
from tests.mqtt_parts import Mosquitto, Subscriber


class Events:
    """What the session told its user, in order."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.acks: list[tuple[int, bool, str]] = []

    def on_connected(self) -> None:
        self.said.append("connected")

    def on_disconnected(self) -> None:
        self.said.append("disconnected")

    def on_ack(self, mid: int, failed: bool, reason: str) -> None:
        self.acks.append((mid, failed, reason))

    def acked(self, mid: int) -> bool:
        return any(m == mid for m, _, _ in self.acks)


@contextlib.asynccontextmanager
async def session(port: int) -> AsyncIterator[tuple[MqttSession, Events]]:
    cfg = Mqtt(url=f"mqtt://127.0.0.1:{port}", host="127.0.0.1", port=port, tls=False, client_id="gw")
    events = Events()
    s = MqttSession(cfg, "meters/gw/status", events, max_inflight=10)
    s.attach()
    tasks = [asyncio.create_task(loop(), name=name) for name, loop in s.loops().items()]
    try:
        yield s, events
    finally:
        s.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await s.disconnect()
        s.release()


def test_connects_delivers_and_reports_each_ack_by_message_id(broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, "meters/gw/#")

    async def go() -> None:
        async with session(broker.port) as (s, events):
            assert not s.publish_direct("meters/gw/early", b"x")  # not connected yet: refused, not queued
            assert await s.wait_connected(10)
            assert events.said == ["connected"] and s.stats.connects == 1 and s.last_connect_error == ""
            assert s.publish_direct("meters/gw/health", b'{"ok": true}', qos=1)
            mid = s.send("meters/gw/m1/reading", b'{"seq": 1}')
            await wait_until_async(lambda: events.acked(mid), 15, f"the PUBACK of mid {mid}")
            assert (mid, False, "Success") in events.acks
            await wait_until_async(
                lambda: sub.json("/m1/reading") and sub.json("/health"), 15, "both messages at the platform"
            )
        # On stop: "offline", then DISCONNECT (a clean one: the will is not sent on top).
        await wait_until_async(
            lambda: [m["state"] for m in sub.json("/status")] == ["online", "offline"], 15, "online, offline"
        )

    try:
        asyncio.run(go())
    finally:
        sub.close()
    assert sub.json("/m1/reading") == [{"seq": 1}] and not sub.json("/early")


def test_reconnects_after_the_broker_restarts(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with session(broker.port) as (s, events):
            assert await s.wait_connected(10)
            broker.stop()
            await wait_until_async(lambda: s.last_connect_error == "connection refused", 15, "a refused reconnect")
            assert events.said == ["connected", "disconnected"] and not s.connected
            broker.start()  # the same port
            await wait_until_async(lambda: s.stats.connects == 2, 15, "the second connect")
            mid = s.send("meters/gw/m1/reading", b'{"seq": 2}')
            await wait_until_async(lambda: events.acked(mid), 15, f"the PUBACK of mid {mid} after the reconnect")
            assert events.said[-1] == "connected" and s.stats.disconnects == 1 and s.last_connect_error == ""

    with caplog.at_level(logging.INFO, logger="collector.daemon.publisher"):
        asyncio.run(go())
    said = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("MQTT connection lost") for m in said) == 1
    assert sum(m.startswith("MQTT cannot connect") and "connection refused" in m for m in said) == 1
    assert sum(m.startswith("MQTT connected to 127.0.0.1") for m in said) == 2
