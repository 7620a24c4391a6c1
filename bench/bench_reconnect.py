"""Back after an outage: seconds from the broker's return to the first buffered reading at the platform.

Run:  .venv/bin/python bench/bench_reconnect.py [OUTAGES] [MIN_S] [MAX_S]   (default 12 outages of 10-40 s)

The real daemon (a process, 2 simulated SDM120s polled every 1 s) publishes through a TCP relay
to a Mosquitto of its own; a platform subscriber is connected to the broker directly. The relay
refuses connections for a random time (as a broker that is down does), then accepts again. For each
outage it records how long after the return the first reading polled during the outage reached the
subscriber. Baseline, through the same relay in the same outages: a paho client with paho's own
reconnect (loop_start, reconnect_delay_set defaults 1-120 s), timed to its CONNACK. Goal: p95 <= 5 s.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port
from tests.integration.daemon_parts import site_config
from tests.mqtt_parts import Mosquitto, Proxy, Subscriber


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def main() -> None:
    outages = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    low = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    high = float(sys.argv[3]) if len(sys.argv) > 3 else 40.0
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start()
        sim_port = free_port()
        sim_args = ["--tcp", f"127.0.0.1:{sim_port}", "--ids", "1-2"]
        sim = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "simulate", "--model", "eastron-sdm120", *sim_args],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert sim.stdout is not None and "simulating" in sim.stdout.readline()
        proxy = Proxy(broker.port)
        sub = Subscriber(broker.port, "meters/gw1/#")
        cfg = site_config(tmp, mqtt_url=f"mqtt://127.0.0.1:{proxy.port}", sim_port=sim_port, meters=2)
        log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
        daemon = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "-c", str(cfg)], stdout=log, stderr=log, cwd=ROOT
        )
        connacks: list[float] = []
        base = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-baseline", protocol=mqtt.MQTTv5)
        base.on_connect = lambda c, u, f, rc, p: connacks.append(time.monotonic())
        base.connect_async("127.0.0.1", proxy.port)
        base.loop_start()
        ours: list[float] = []
        theirs: list[float] = []
        try:
            sub.wait_for(lambda: len(sub.json("/reading")) >= 4, 30, "readings")
            for i in range(outages):
                length = rng.uniform(low, high)
                proxy.cut()
                cut = time.time()
                time.sleep(length)
                back_wall, back = time.time(), time.monotonic()
                proxy.restore()
                ours_at = theirs_at = None
                while time.monotonic() - back < 180 and (ours_at is None or theirs_at is None):
                    if ours_at is None and any(
                        cut + 1 < datetime.fromisoformat(r["slot"].replace("Z", "+00:00")).timestamp() < back_wall - 1
                        for r in sub.json("/reading")
                    ):
                        ours_at = time.monotonic()
                    if theirs_at is None and connacks and connacks[-1] > back:
                        theirs_at = connacks[-1]
                    time.sleep(0.05)
                ours.append((ours_at or float("inf")) - back)
                theirs.append((theirs_at or float("inf")) - back)
                print(
                    f"outage {i + 1:2d}: {length:5.1f} s down; first buffered reading {ours[-1]:5.2f} s after "
                    f"the return; paho's own reconnect {theirs[-1]:6.2f} s",
                    flush=True,
                )
                time.sleep(3)
        finally:
            base.loop_stop()
            daemon.terminate()
            daemon.wait(20)
            sim.terminate()
            proxy.close()
            sub.close()
            broker.stop()
        print(
            json.dumps(
                {
                    "outages": outages,
                    "down_s": [low, high],
                    "ours_median_s": round(statistics.median(ours), 2),
                    "ours_p95_s": round(p95(ours), 2),
                    "paho_default_median_s": round(statistics.median(theirs), 2),
                    "paho_default_p95_s": round(p95(theirs), 2),
                    "ratio_p95": round(p95(ours) / p95(theirs), 3),
                }
            )
        )


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # the relay's threads end with the sockets they pipe
    main()
