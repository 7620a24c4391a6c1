"""Reading-path benchmarks: requests per poll, and a full SDM630 read's time on a 9600-baud line.

Run:  .venv/bin/python bench/bench_reading.py   (needs socat; about 20 s)

1. Requests per poll for each model's full point set, planned (serial gap budget) against the
   baseline of one request per point.
2. A full SDM630 read over RTU on a socat pty pair, the simulator answering each request after the
   wire time of request and reply at 9600 baud 8N1 (a pty has no baud rate) and a stated meter
   turnaround (`simulate --turnaround`). What is left of each request beyond the line time (bytes at
   10 bits a character, the 3.5-character silences) and the turnaround is the overhead, in ms per
   request: ours, pymodbus's, the pty's and the simulator's together. The one-request-per-point
   read is measured in the same run as the baseline.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.simulator.meters import make_slave
from collector.simulator.modbus import SerialServer
from drivers import registry
from drivers.modbus.device import read_device
from drivers.modbus.planner import DEFAULT_GAP_SERIAL, plan
from drivers.modbus.transport import Link, ModbusTransport
from drivers.serialport import SerialSettings

BAUD = 9600


def requests_per_poll() -> None:
    print(f"1. requests per poll, full point set (serial gap budget {DEFAULT_GAP_SERIAL} registers)")
    print(f"   {'model':<18} {'points':>6} {'planned':>8} {'per point':>10} {'ratio':>6}")
    for name in registry.names():
        m = registry.load(name)
        if m.protocol != "modbus":
            continue  # DL/T 645 and CJ/T 188 read one identifier a request; SunSpec maps are discovered
        planned = len(plan(m, list(m.points), gap=DEFAULT_GAP_SERIAL))
        single = len(plan(m, list(m.points), gap=0, single=True))
        print(f"   {name:<18} {len(m.points):>6} {planned:>8} {single:>10} {planned / single:>6.2f}")


TURNAROUND = 0.010  #: stated: a meter answering 10 ms after a request ends (datasheets: a few ms to 50+)


async def wire_read(dev_a: str, dev_b: str, single: bool, polls: int) -> tuple[float, float, int]:
    """(median seconds per read, line seconds per read from the bytes and silences, requests per read)."""
    model = registry.load("eastron-sdm630")
    slave, _ = make_slave(model, [1], serial=True, baudrate=BAUD, static=True, turnaround=TURNAROUND)
    server = SerialServer(slave, dev_a, BAUD)
    await server.start()
    link = Link(kind="rtu", serial=SerialSettings(dev_b, BAUD), timeout=2.0, retries=0)
    t = ModbusTransport(link)
    names = [p.name for p in model.points]
    times = []
    try:
        await read_device(t, 1, model, names, gap=DEFAULT_GAP_SERIAL, single=single)  # open the port
        t.bytes_in = t.bytes_out = t.requests = 0
        for _ in range(polls):
            started = time.perf_counter()
            r = await read_device(t, 1, model, names, gap=DEFAULT_GAP_SERIAL, single=single)
            times.append(time.perf_counter() - started)
            assert not r.errors, r.errors
    finally:
        t.close()
        await server.stop()
    per_read_bytes = (t.bytes_in + t.bytes_out) / polls
    per_read_requests = t.requests // polls
    line = per_read_bytes * 10 / BAUD + per_read_requests * 2 * link.silence
    return statistics.median(times), line, per_read_requests


def wire_time(polls: int = 10) -> None:
    print(
        f"\n2. full SDM630 read over RTU at {BAUD} baud 8N1 on a socat pty pair, the simulator answering after "
        f"the wire time and a stated meter turnaround of {TURNAROUND * 1000:g} ms; median of {polls} reads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "A"), os.path.join(tmp, "B")
        socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
        )
        try:
            while not (os.path.exists(a) and os.path.exists(b)):
                time.sleep(0.01)
            planned, planned_line, planned_reqs = asyncio.run(wire_read(a, b, False, polls))
            single, single_line, single_reqs = asyncio.run(wire_read(a, b, True, polls))
        finally:
            socat.terminate()
    print(
        f"   {'plan':<16} {'requests':>8} {'measured ms':>12} {'line ms':>8} {'turnaround ms':>14} "
        f"{'overhead ms per request':>24}"
    )
    for label, measured, line, reqs in (
        ("coalesced", planned, planned_line, planned_reqs),
        ("one per point", single, single_line, single_reqs),
    ):
        turn = reqs * TURNAROUND
        overhead = (measured - line - turn) / reqs
        print(
            f"   {label:<16} {reqs:>8} {measured * 1000:>12.1f} {line * 1000:>8.1f} {turn * 1000:>14.1f} "
            f"{overhead * 1000:>24.2f}"
        )
    print(f"   coalesced / one-per-point time: {planned / single:.2f}")
    print(
        "   overhead: what is left of a request beyond its bytes on the line, the silences and the turnaround: "
        "ours, pymodbus's, the pty's and the simulator's time together (an upper bound on ours)"
    )


if __name__ == "__main__":
    requests_per_poll()
    wire_time()
