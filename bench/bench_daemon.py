"""The daemon under load: values delivered per second, CPU per value, memory.

Run:  .venv/bin/python bench/bench_daemon.py --meters 200 --interval 1s --seconds 30 [--runs 3]
      .venv/bin/python bench/bench_daemon.py --meters 200 --interval 1m --seconds 180

Simulated SDM630s (32 points each) are served over Modbus TCP by `meter-collector simulate`
processes (one per bus of 50 meters), a Mosquitto of its own takes the readings, and the daemon
runs as its own process. The figures are the daemon's alone (from /proc): CPU seconds and RSS;
the subscriber counts the values that arrive. Baseline, in the same run: the Python interpreter
with the daemon's imports loaded and idle (RSS), to show what the daemon itself adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.bench_drain import free_port, start_broker

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def simulated_site(tmp: Path, meters: int, interval: str, mqtt_port: int) -> tuple[Path, list[subprocess.Popen[str]]]:
    """A site of ``meters`` simulated SDM630s (32 points) on Modbus TCP, one `simulate` process per 50
    meters (bus lan<b>, meter ids m<b>-<unit>), the daemon's config for them in ``tmp``."""
    per_bus = 50
    buses = (meters + per_bus - 1) // per_bus
    sims, lines = [], []
    for b in range(buses):
        port = free_port()
        n = min(per_bus, meters - b * per_bus)
        sims.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "collector.cli",
                    "simulate",
                    "--model",
                    "eastron-sdm630",
                    "--tcp",
                    f"127.0.0.1:{port}",
                    "--ids",
                    f"1-{n}",
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
        lines.append(f"  - {{name: lan{b}, type: tcp, host: 127.0.0.1, port: {port}, timeout: 1s}}")
    for s in sims:
        assert s.stdout is not None and "simulating" in s.stdout.readline()
    ids = [
        f"  - {{id: m{b}-{i}, bus: lan{b}, address: {i}, model: eastron-sdm630, interval: {interval}}}"
        for b in range(buses)
        for i in range(1, min(per_bus, meters - b * per_bus) + 1)
    ]
    cfg = tmp / "site.yaml"
    cfg.write_text(
        f"gateway: {{id: bench}}\nstorage: {{path: {tmp / 'buffer.db'}}}\n"
        f'mqtt: {{url: "mqtt://127.0.0.1:{mqtt_port}"}}\nclock: {{sync_check: none}}\n'
        "buses:\n" + "\n".join(lines) + "\nmeters:\n" + "\n".join(ids) + "\n"
    )
    return cfg, sims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--seconds", type=float, default=30, help="length of one measuring window")
    ap.add_argument("--runs", type=int, default=3, help="windows, one after the other; the median is quoted")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the daemon during the first window (a flame graph SVG)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        broker, mqtt_port = start_broker(t)
        cfg, sims = simulated_site(t, args.meters, args.interval, mqtt_port)
        values = 0
        readings = 0
        lock = threading.Lock()

        def on_message(c: object, u: object, m: mqtt.MQTTMessage) -> None:
            nonlocal values, readings
            if m.topic.endswith("/reading"):
                body = json.loads(m.payload)
                with lock:
                    values += len(body["values"])
                    readings += 1

        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("meters/bench/#", qos=1)
        sub.on_message = on_message
        sub.connect("127.0.0.1", mqtt_port)
        sub.loop_start()
        idle = subprocess.Popen(
            [sys.executable, "-c", "import collector.cli, collector.daemon.service, time; time.sleep(3600)"], cwd=ROOT
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "-c", str(cfg)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(max(5.0, min(65.0, args.seconds / 3)))  # warm up: connect, first slots
            spy = None
            if args.profile:  # py-spy samples from outside: the daemon's CPU is its own, a little more
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "-p",
                        str(daemon.pid),
                        "-o",
                        args.profile,
                        "-d",
                        str(int(args.seconds)),
                        *(["--format", "raw"] if not args.profile.endswith(".svg") else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            peak = 0.0
            windows = []  # (seconds, CPU seconds, values, readings) of each window
            for _ in range(args.runs):
                c0, v0, r0, t0 = cpu_seconds(daemon.pid), values, readings, time.monotonic()
                while time.monotonic() - t0 < args.seconds:
                    time.sleep(1)
                    peak = max(peak, rss_mb(daemon.pid))
                c1, v1, r1, t1 = cpu_seconds(daemon.pid), values, readings, time.monotonic()
                windows.append((t1 - t0, c1 - c0, v1 - v0, r1 - r0))
            idle_rss = rss_mb(idle.pid)
            if spy is not None:
                spy.wait(60)
        finally:
            daemon.terminate()
            daemon.wait(30)
            idle.kill()
            for s in sims:
                s.terminate()
            sub.loop_stop()
            broker.terminate()
    per_cpu = [v / c if c else float("inf") for _, c, v, _ in windows]
    median = statistics.median(per_cpu)
    dt, cpu, v, r = windows[per_cpu.index(sorted(per_cpu)[len(per_cpu) // 2])]  # the median window
    print(f"daemon: {args.meters} SDM630 meters every {args.interval}, {args.runs} windows of {args.seconds:.0f} s")
    print(f"   delivered: {v / dt:,.0f} values/s ({r / dt:,.1f} readings/s) in the median window")
    print(
        f"   CPU: {100 * cpu / dt:.2f} % of one core; {median:,.0f} values per CPU second (median; "
        f"windows: {', '.join(f'{x:,.0f}' for x in per_cpu)})"
    )
    print(f"   RSS: {peak:.1f} MB peak; baseline (interpreter with the daemon's imports, idle) {idle_rss:.1f} MB")
    print(f"   load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
