"""Backlog drain: a buffer of N readings delivered to a local Mosquitto at QoS 1.

Run:  .venv/bin/python bench/bench_drain.py [N]     (default 1,000,000; needs mosquitto)

Fills a fresh buffer with N readings (5 values each, 20 meters), starts the publisher against a
Mosquitto of its own on loopback and times until every row is acknowledged and deleted. The
baseline, measured in the same run: paho alone publishing the same payloads from memory with the
same in-flight window, no SQLite. Goal: >= 10,000 readings/s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.config import Mqtt
from collector.daemon.buffer import AsyncBuffer, Buffer
from collector.daemon.payloads import Topics, message
from collector.daemon.publisher import Publisher
from collector.daemon.records import Record

WINDOW = int(os.environ.get("WINDOW", "100"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(tmp: Path, max_inflight: int | None = WINDOW, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto of its own on loopback; ``max_inflight``: its max_inflight_messages (None: stock, 20);
    ``extra``: more lines of its config."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp / "m.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    # The broker's receive maximum for MQTT 5 clients is max_inflight_messages (default 20).
    inflight = f"max_inflight_messages {max_inflight}\n" if max_inflight is not None else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{inflight}{extra}{user}")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")


def fill(path: Path, n: int) -> float:
    b = Buffer(path, max_size=10 * 1000**3, max_age=3650 * 86400)
    t0 = datetime.now(UTC)
    started = time.perf_counter()
    batch = 10_000
    for start in range(0, n, batch):
        recs = [
            Record(
                f"meter-{i % 20:02d}",
                t0 + timedelta(seconds=i // 20),
                t0 + timedelta(seconds=i // 20),
                {
                    "energy_import": 15321.07 + i * 0.01,
                    "active_power": 12.84,
                    "voltage_l1": 230.1,
                    "current_l1": 18.6,
                    "frequency": 50.01,
                },
            )
            for i in range(start, min(n, start + batch))
        ]
        b.append(recs)
    used = b.used_bytes()
    b.close()
    print(
        f"   filled {n:,} readings in {time.perf_counter() - started:.1f} s; "
        f"{used / (n * 5):.2f} bytes per stored value ({used / 1e6:.0f} MB)"
    )
    return used / (n * 5)


async def drain(path: Path, port: int, n: int) -> float:
    buf = await AsyncBuffer.open(str(path), max_age=3650 * 86400, max_size=10 * 1000**3)
    cfg = Mqtt(
        url=f"mqtt://127.0.0.1:{port}", host="127.0.0.1", port=port, tls=False, client_id="bench", max_inflight=WINDOW
    )
    pub = Publisher(cfg, "bench-gw", buf, Topics("meters", "bench-gw"), window=WINDOW)
    started = time.perf_counter()
    await pub.start()
    while True:
        await asyncio.sleep(0.5)
        depth = await buf.depth()
        if depth == 0:
            break
    elapsed = time.perf_counter() - started
    await pub.stop()
    await buf.close()
    assert pub.stats.acked >= n, pub.stats
    return n / elapsed


def baseline(path: Path, port: int, n: int) -> float:
    """paho alone, payloads prepared in memory, the same window."""
    b = Buffer(path)
    topics = Topics("meters", "bench-gw")
    msgs = [message(r, "bench-gw", topics) for r in b.fetch(0, n)]
    b.close()
    done = threading.Event()
    acked = 0
    inflight = threading.Semaphore(WINDOW)

    def on_publish(c: object, u: object, mid: int, rc: object, p: object) -> None:
        nonlocal acked
        acked += 1
        inflight.release()
        if acked == len(msgs):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(WINDOW)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    started = time.perf_counter()
    for topic, payload in msgs:
        inflight.acquire()
        c.publish(topic, payload, qos=1)
    done.wait()
    elapsed = time.perf_counter() - started
    c.disconnect()
    c.loop_stop()
    return len(msgs) / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        broker, port = start_broker(t)
        try:
            print(f"backlog drain, {n:,} readings, QoS 1, window {WINDOW}, local Mosquitto")
            fill(t / "base.db", min(n, 200_000))
            base = baseline(t / "base.db", port, min(n, 200_000))
            fill(t / "buffer.db", n)
            rate = asyncio.run(drain(t / "buffer.db", port, n))
        finally:
            broker.terminate()
    print(f"   drain:    {rate:,.0f} readings/s (SQLite read, JSON, publish, PUBACK, batched delete)")
    print(f"   baseline: {base:,.0f} messages/s (paho alone, payloads in memory)")
    print(f"   drain / baseline: {rate / base:.2f}")


if __name__ == "__main__":
    main()
