"""Reading-path benchmarks: requests per poll, and a full SDM630 read's time on a 9600-baud line.

Run:  .venv/bin/python bench/bench_reading.py   (needs socat; about 20 s)

1. Requests per poll for each model's full point set, planned (serial gap budget) against the
   baseline of one request per point.
2. A full SDM630 read over RTU on a socat pty pair, the simulator delaying each reply by the wire
   time of the request and reply at 9600 baud 8N1 (a pty has no baud rate). The measured time is
   compared with the bound computed from the bytes exchanged (10 bits a character) plus the
   3.5-character silence before each frame; the one-request-per-point read is measured in the same
   run as the baseline.
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


async def wire_read(dev_a: str, dev_b: str, single: bool, polls: int) -> tuple[float, float, int]:
    """(median seconds per read, bound seconds per read from bytes, requests per read)."""
    model = registry.load("eastron-sdm630")
    slave, _ = make_slave(model, [1], serial=True, baudrate=BAUD, static=True)
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
    bound = per_read_bytes * 10 / BAUD + per_read_requests * 2 * link.silence
    return statistics.median(times), bound, per_read_requests


def wire_time(polls: int = 10) -> None:
    print(f"\n2. full SDM630 read (32 points) over RTU at {BAUD} baud 8N1, emulated line timing, median of {polls}")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "A"), os.path.join(tmp, "B")
        socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
        )
        try:
            while not (os.path.exists(a) and os.path.exists(b)):
                time.sleep(0.01)
            planned, planned_bound, planned_reqs = asyncio.run(wire_read(a, b, False, polls))
            single, single_bound, single_reqs = asyncio.run(wire_read(a, b, True, polls))
        finally:
            socat.terminate()
    print(f"   {'plan':<16} {'requests':>8} {'measured ms':>12} {'bound ms':>9} {'measured/bound':>15}")
    print(
        f"   {'coalesced':<16} {planned_reqs:>8} {planned * 1000:>12.1f} {planned_bound * 1000:>9.1f} "
        f"{planned / planned_bound:>15.2f}"
    )
    print(
        f"   {'one per point':<16} {single_reqs:>8} {single * 1000:>12.1f} {single_bound * 1000:>9.1f} "
        f"{single / single_bound:>15.2f}"
    )
    print(f"   coalesced / one-per-point time: {planned / single:.2f}")


if __name__ == "__main__":
    requests_per_poll()
    wire_time()
