"""The publisher against a real Mosquitto: a long backlog does not starve fresh readings."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.config import Mqtt
from collector.daemon.buffer import AsyncBuffer, Buffer
from collector.daemon.payloads import Topics
from collector.daemon.publisher import Publisher
from collector.daemon.records import Record
from tests.mqtt_parts import Mosquitto, Subscriber

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def test_fresh_readings_are_not_starved_by_a_backlog(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sub = Subscriber(broker.port, "meters/gw/#")
    backlog = 20_000
    b = Buffer(tmp_path / "buf.db")
    b.append(
        [Record("old", T0 + timedelta(seconds=i), T0 + timedelta(seconds=i), {"x": float(i)}) for i in range(backlog)]
    )
    b.close()

    async def go() -> None:
        buf = await AsyncBuffer.open(str(tmp_path / "buf.db"), max_age=3650 * 86400, max_size=10**10)
        cfg = Mqtt(url="", host="127.0.0.1", port=broker.port, tls=False, client_id="gw")
        pub = Publisher(cfg, "gw", buf, Topics("meters", "gw"), window=20)
        try:
            await pub.start()
            assert await pub.wait_connected(10)
            await asyncio.sleep(0.05)
            for i in range(5):  # a current reading every 50 ms while the backlog drains
                now = datetime.now(UTC)
                rows = await buf.append([Record("fresh", now, now, {"x": float(i)})])
                pub.offer(rows)
                await asyncio.sleep(0.05)
            # Until every row is acknowledged and deleted; ~5 s here, 60 s is a deadline, not a pace.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while depth := await buf.depth():
                if loop.time() > deadline:
                    raise AssertionError(f"{depth} rows still unacknowledged after 60 s")
                await asyncio.sleep(0.1)
        finally:
            await pub.stop()
            await buf.close()

    try:
        asyncio.run(go())
        sub.wait_for(lambda: len(sub.json("/reading")) >= backlog + 5, 20, "everything")
    finally:
        sub.close()
        broker.stop()
    order = [json.loads(p)["meter"] for t, p, _ in sub.messages if t.endswith("/reading")]
    last_fresh = max(i for i, m in enumerate(order) if m == "fresh")
    # The fresh readings arrived while the backlog was still draining, not after it.
    assert last_fresh < backlog / 2, last_fresh
    old = [json.loads(p)["seq"] for t, p, _ in sub.messages if t.endswith("/old/reading")]
    assert old == sorted(old)  # the backlog itself goes oldest first


def test_the_window_never_exceeds_the_brokers_receive_maximum(tmp_path: Path) -> None:
    """Stock Mosquitto says Receive Maximum 20 in its CONNACK; more unacknowledged messages than
    that is a protocol error a broker may disconnect for. This one says 5; the window is 100."""
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b", extra=("max_inflight_messages 5",)).start()
    b = Buffer(tmp_path / "buf.db")
    b.append([Record("m", T0 + timedelta(seconds=i), T0 + timedelta(seconds=i), {"x": float(i)}) for i in range(300)])
    b.close()
    seen: list[int] = []

    async def go() -> int:
        buf = await AsyncBuffer.open(str(tmp_path / "buf.db"), max_age=3650 * 86400, max_size=10**10)
        cfg = Mqtt(url="", host="127.0.0.1", port=broker.port, tls=False, client_id="gw")
        pub = Publisher(cfg, "gw", buf, Topics("meters", "gw"), window=100)
        send = pub.session.send

        def counted(topic: str, payload: bytes) -> int:
            seen.append(pub.inflight + 1)  # in flight once this one is sent
            return send(topic, payload)

        pub.session.send = counted  # type: ignore[method-assign]
        try:
            await pub.start()
            assert await pub.wait_connected(10)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await buf.depth():
                assert loop.time() < deadline, "the backlog was not delivered in 60 s"
                await asyncio.sleep(0.05)
            return pub.session.receive_maximum or 0
        finally:
            await pub.stop()
            await buf.close()

    try:
        assert asyncio.run(go()) == 5
    finally:
        broker.stop()
    assert len(seen) >= 300 and max(seen) == 5, max(seen)
