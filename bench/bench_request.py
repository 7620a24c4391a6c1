"""CPU per Modbus request on the client side: our transport against a minimal asyncio client doing the
same requests, in the same run.

Run:  .venv/bin/python bench/bench_request.py [--reads 1000] [--runs 5]

A `meter-collector simulate` process serves an SDM630 over Modbus TCP on loopback. Each run reads the
SDM630's full plan (its 4 requests, as a poll does) ``--reads`` times with
(a) ModbusTransport.read_plan, the path every poll takes: the requests chained, each sent from the
    reply handler of the one before;
(b) ModbusTransport.read_data one request at a time (one future, one timer and a task wake-up each);
(c) the baseline: an asyncio stream that writes the MBAP frame built with struct and reads the reply,
    checks the transaction id and unpacks the words (what any Modbus TCP client must do at least).
The figures are this process's CPU time (the simulator's is not counted) per request; median of the
runs, interleaved so that a busy moment hits all three. pymodbus's own client measured 141 µs per
request on this machine before (a) and (b) replaced it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers import registry
from drivers.modbus.planner import DEFAULT_GAP_TCP, plan
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function

UNIT = 1
SDM630 = registry.load("eastron-sdm630")
PLAN = [(r.function, r.address, r.count) for r in plan(SDM630, list(SDM630.published), gap=DEFAULT_GAP_TCP)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def chained(port: int, n: int) -> float:
    t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, timeout=2.0, retries=0))
    await t.read_plan(UNIT, PLAN)  # connect outside the measurement
    start = time.process_time()
    for _ in range(n):
        got = await t.read_plan(UNIT, PLAN)
        assert all(isinstance(g, bytes) for g in got)
    spent = time.process_time() - start
    t.close()
    return spent


async def one_by_one(port: int, n: int) -> float:
    t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, timeout=2.0, retries=0))
    await t.read_data(UNIT, *PLAN[0])
    start = time.process_time()
    for _ in range(n):
        for function, address, count in PLAN:
            await t.read_data(UNIT, function, address, count)
    spent = time.process_time() - start
    t.close()
    return spent


async def floor(port: int, n: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = struct.Struct(">HHHB")

    async def once(tid: int, function: Function, address: int, count: int) -> tuple[int, ...]:
        writer.write(head.pack(tid, 0, 6, UNIT) + struct.pack(">BHH", function.code, address, count))
        mbap = await reader.readexactly(7)
        got, _, length, _ = head.unpack(mbap)
        body = await reader.readexactly(length - 1)
        if got != tid or body[0] != function.code:
            raise RuntimeError("reply out of step")
        return struct.unpack_from(f">{count}H", body, 2)

    await once(0, *PLAN[0])
    tid = 0
    start = time.process_time()
    for _ in range(n):
        for function, address, count in PLAN:
            tid = tid % 0xFFFF + 1
            await once(tid, function, address, count)
    spent = time.process_time() - start
    writer.close()
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=1000, help="plan reads per run (4 requests each)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "simulate", "--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    runs: dict[str, list[float]] = {"chained": [], "one by one": [], "floor": []}
    per = args.reads * len(PLAN)
    try:
        assert sim.stdout is not None
        sim.stdout.readline()  # the banner: it listens
        for _ in range(args.runs):
            runs["chained"].append(asyncio.run(chained(port, args.reads)) / per * 1e6)
            runs["one by one"].append(asyncio.run(one_by_one(port, args.reads)) / per * 1e6)
            runs["floor"].append(asyncio.run(floor(port, args.reads)) / per * 1e6)
    finally:
        sim.kill()
        sim.wait()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"Modbus TCP, client CPU per request, the SDM630 plan ({len(PLAN)} requests): {args.reads} reads x {args.runs}"
    )
    labels = {
        "chained": "ours, read_plan (chained)",
        "one by one": "ours, read_data one at a time",
        "floor": "floor (asyncio stream + struct)",
    }
    for k, label in labels.items():
        ratio = med[k] / med["floor"]
        print(f"  {label:32s} {med[k]:7.1f} us  x{ratio:5.2f}  (runs: {', '.join(f'{x:.0f}' for x in runs[k])})")
    print(f"  load average: {os.getloadavg()[0]:.2f} (2 cores: the figures are worth comparing within one run)")


if __name__ == "__main__":
    main()
