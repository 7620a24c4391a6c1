"""Back after a long outage: the daemon drains a backlog of 30-value readings into a stock Mosquitto
while it keeps polling its meters, a platform subscriber (QoS 1) attached.

Run:  .venv/bin/python bench/bench_backlog.py [--readings 300000] [--meters 200] [--runs 3]

The buffer is filled beforehand with ``--readings`` readings of 30 values (the meters of the site,
one a minute each, ending an hour ago: 300,000 is about a day of 200 meters; a week is 2 million,
which the same rate drains in 7 times as long). The broker is Mosquitto with its stock settings
(``max_inflight_messages`` 20: the Receive Maximum it announces, which the daemon's window follows).
The daemon runs as its own process with ``--meters`` simulated SDM630s polled every 1 s (our
`simulate`, one process per 50 meters). A paho subscriber (its own network thread, QoS 1) counts the
messages. Measured: backlog readings per second, from the first one at the subscriber to the last one
acknowledged and deleted from the buffer (the daemon's rate; the subscriber must then have them all),
and how many polled readings reached the subscriber meanwhile (every meter, every second: 1.0). The
broker queues without limit for the subscriber (``max_queued_messages 0``): a Python subscriber
slower than the daemon would otherwise lose QoS 1 messages at Mosquitto's default of 1000.

Baseline, in the same run, against the same broker and subscriber: paho at its best, its own loop
(``loop_start``), ``max_inflight_messages`` 20, the same payloads prepared in memory (the first
100,000), handed over in batches of 500 without a lock per message (paho scans its whole queue on
every PUBACK: handed 100,000 at once it slows to a crawl), timed from its first PUBACK to its last.
Prints the median of ``--runs`` runs of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.bench_daemon import simulated_site
from bench.bench_drain import start_broker
from collector.daemon.buffer import Buffer
from collector.daemon.payloads import Topics, message
from collector.daemon.records import Record
from drivers import registry

WINDOW = 20  #: stock Mosquitto's max_inflight_messages
BASELINE_MAX = 100_000  #: messages the baseline publishes
QUEUED = 500  #: the baseline keeps paho's queue between 500 and 1,000 messages (no lock per message)


class Subscriber:
    """The platform: QoS 1 on the gateway's readings; counts backlog (seq <= last) and fresh ones."""

    def __init__(self, port: int, backlog_last_seq: int) -> None:
        self.last = backlog_last_seq
        self.lock = threading.Lock()
        self.backlog = 0
        self.fresh = self.fresh_at_last = 0
        self.first_at = self.last_at = 0.0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"platform-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("meters/bench/meters/+/reading", qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, c: object, u: object, m: mqtt.MQTTMessage) -> None:
        # The seq without parsing the JSON: the subscriber must not be the bottleneck.
        at = m.payload.find(b'"seq":')
        seq = int(m.payload[at + 6 : m.payload.index(b",", at)])
        now = time.monotonic()
        with self.lock:
            if seq <= self.last:
                self.backlog += 1
                if self.backlog == 1:
                    self.first_at = now
                self.last_at = now
                self.fresh_at_last = self.fresh
            elif self.backlog:  # polled while the backlog drains
                self.fresh += 1

    def reset(self, backlog_last_seq: int) -> None:
        with self.lock:
            self.last, self.backlog, self.fresh, self.fresh_at_last = backlog_last_seq, 0, 0, 0
            self.first_at = self.last_at = 0.0

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fill(path: Path, meter_ids: list[str], n: int) -> None:
    """n readings of 30 values, the meters in turn, one a minute each, the newest an hour ago."""
    names = [p.name for p in registry.load("eastron-sdm630").published][:30]
    values = {name: 230.0 + i * 1.25 for i, name in enumerate(names)}
    minutes = (n + len(meter_ids) - 1) // len(meter_ids)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1, minutes=minutes)
    b = Buffer(path, max_size=10 * 1000**3, max_age=3650 * 86400)
    batch: list[Record] = []
    for i in range(n):
        slot = start + timedelta(minutes=i // len(meter_ids))
        batch.append(Record(meter_ids[i % len(meter_ids)], slot, slot, {k: v + i * 1e-3 for k, v in values.items()}))
        if len(batch) == 10_000:
            b.append(batch)
            batch = []
    if batch:
        b.append(batch)
    b.close()


def backlog_left(buffer: Path, last_seq: int) -> int:
    """Backlog rows still in the daemon's buffer (read-only, beside the daemon: WAL readers do not block)."""
    conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE seq <= ?", (last_seq,)).fetchone()[0])
    finally:
        conn.close()


def drain(cfg: Path, buffer: Path, sub: Subscriber, n: int, meters: int) -> tuple[float, float]:
    """(backlog readings/s: the first one at the subscriber to the last one acknowledged and deleted,
    fresh readings per meter per second at the subscriber meanwhile)"""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "run", "-c", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + max(120.0, n / 500)
        while backlog_left(buffer, n) and time.monotonic() < deadline:
            time.sleep(0.1)
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode})")
        done_at = time.monotonic()
        fresh = sub.fresh
        while sub.backlog < n and time.monotonic() < deadline:  # the broker still forwarding the last ones
            time.sleep(0.1)
    finally:
        daemon.terminate()
        daemon.wait(30)
    if sub.backlog < n:
        raise RuntimeError(f"only {sub.backlog} of {n} backlog readings reached the subscriber")
    took = done_at - sub.first_at
    return n / took, fresh / meters / took


def baseline(buffer: Path, port: int, sub: Subscriber, n: int) -> float:
    """paho alone: its own network thread, everything handed over at once, window 20."""
    b = Buffer(buffer)
    topics = Topics("meters", "bench")
    msgs = [message(r, "bench", topics) for r in b.fetch(0, min(n, BASELINE_MAX))]
    b.close()
    done = threading.Event()
    room = threading.Condition()
    acked = 0
    first_at = 0.0

    def on_publish(c: object, u: object, mid: int, rc: object, p: object) -> None:
        nonlocal acked, first_at
        acked += 1  # paho calls this from its one thread
        if acked == 1:
            first_at = time.monotonic()
        if acked % QUEUED == 0 or acked == len(msgs):
            with room:
                room.notify()
        if acked == len(msgs):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(WINDOW)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    sent = 0

    def has_room() -> bool:
        return sent - acked < 2 * QUEUED

    for topic, payload in msgs:
        if not has_room():  # paho's queue scan per ack is O(queued): hand it batches, not 100,000
            with room:
                room.wait_for(has_room, timeout=10)
        c.publish(topic, payload, qos=1)
        sent += 1
    if not done.wait(600):
        raise RuntimeError(f"paho: {acked} of {len(msgs)} acknowledged")
    took = time.monotonic() - first_at
    c.disconnect()
    c.loop_stop()
    deadline = time.monotonic() + 60
    while sub.backlog < len(msgs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(msgs) / took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ours, base, fresh = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        broker, port = start_broker(t, max_inflight=None, extra="max_queued_messages 0\n")  # stock: 20 in flight
        cfg, sims = simulated_site(t, args.meters, "1s", port)
        meter_ids = [line.split("id: ")[1].split(",")[0] for line in cfg.read_text().splitlines() if "id: m" in line]
        sub = Subscriber(port, args.readings)
        try:
            for run in range(args.runs):
                buffer = t / "buffer.db"
                for suffix in ("", "-wal", "-shm", ".seq"):
                    Path(f"{buffer}{suffix}").unlink(missing_ok=True)
                fill(buffer, meter_ids, args.readings)
                sub.reset(min(args.readings, BASELINE_MAX))
                base.append(baseline(buffer, port, sub, args.readings))
                sub.reset(args.readings)
                rate, polled = drain(cfg, buffer, sub, args.readings, args.meters)
                ours.append(rate)
                fresh.append(polled)
                print(f"   run {run + 1}: daemon {rate:,.0f} readings/s, baseline {base[-1]:,.0f} /s", flush=True)
        finally:
            sub.stop()
            for s in sims:
                s.terminate()
            broker.terminate()
    o, b = statistics.median(ours), statistics.median(base)
    print(
        f"backlog of {args.readings:,} readings x 30 values, stock Mosquitto (window 20), a QoS 1 subscriber, "
        f"{args.meters} meters polled every 1 s meanwhile; median of {args.runs}"
    )
    print(f"   daemon:   {o:8,.0f} readings/s   (runs: {', '.join(f'{x:,.0f}' for x in ours)})")
    print(f"   baseline: {b:8,.0f} messages/s   (paho alone, its own loop, payloads in memory)")
    print(f"   daemon / baseline: {o / b:.2f}")
    print(f"   polled meanwhile: {statistics.median(fresh):.3f} readings per meter per second (1.0: every slot)")
    print(f"   load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
