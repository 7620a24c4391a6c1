"""`meter-collector demo`: the reading path end to end on one machine, no hardware.

Simulated meters are served over Modbus TCP, over RTU-over-TCP and, when socat is installed, over
RTU on a pty pair (a virtual RS-485 line); a config for them is written to a temporary folder,
checked like any site config, and every meter is read with the same code `read` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.bus import read_once
from collector.cli import render_reading
from collector.config import load_config
from collector.simulator import make_slave
from drivers import registry
from drivers.modbus.server import SerialServer, TcpServer

DEMO_CONFIG = """\
# Written by `meter-collector demo`: simulated meters on this machine.
gateway: {{id: demo-gw, site: demo, building: B01}}
storage: {{path: {tmp}/buffer.db}}
buses:
  - {{name: lan, type: tcp, host: 127.0.0.1, port: {tcp_port}, timeout: 500ms}}
  - {{name: serial-server, type: rtu-over-tcp, host: 127.0.0.1, port: {rot_port}, timeout: 500ms}}
{rtu_bus}meters:
  - {{id: main-incomer, bus: lan, address: 1, model: eastron-sdm630, interval: 1m, category: "01000",
     calibration: {{ct_ratio: 40}}}}
  - {{id: lighting-b1, bus: lan, address: 2, model: eastron-sdm630, interval: 1m, category: "01A00"}}
  - {{id: water-main, bus: serial-server, address: 1, model: tuf-2000m, interval: 15m, category: "02000"}}
{rtu_meter}"""

RTU_BUS = "  - {{name: rs485-1, type: rtu, port: {dev}, baudrate: 9600, parity: N, timeout: 300ms}}\n"
RTU_METER = (
    '  - {{id: hvac-chiller, bus: rs485-1, address: 7, model: chint-dtsu666, interval: 1m, category: "01B00"}}\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _demo(tmp: Path, duration: float) -> int:
    servers: list[Any] = []
    socat = None
    rtu_bus = rtu_meter = ""
    tcp_slave, _ = make_slave(registry.load("eastron-sdm630"), [1, 2], serial=False)
    rot_slave, _ = make_slave(registry.load("tuf-2000m"), [1], serial=True)
    tcp = TcpServer(tcp_slave, "127.0.0.1", 0)
    rot = TcpServer(rot_slave, "127.0.0.1", 0, rtu=True)
    servers += [tcp, rot]
    for s in servers:
        await s.start()
    if shutil.which("socat"):
        a, b = tmp / "ttySIM", tmp / "ttyGW"
        socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            if a.exists() and b.exists():
                break
            await asyncio.sleep(0.02)
        rtu_slave, _ = make_slave(registry.load("chint-dtsu666"), [7], serial=True)
        rtu = SerialServer(rtu_slave, str(a), 9600)
        await rtu.start()
        servers.append(rtu)
        rtu_bus, rtu_meter = RTU_BUS.format(dev=b), RTU_METER.format()
    else:
        print("(socat not found: no virtual RS-485 line; apt-get install socat adds one)")
    path = tmp / "demo.yaml"
    path.write_text(
        DEMO_CONFIG.format(tmp=tmp, tcp_port=tcp.port, rot_port=rot.port, rtu_bus=rtu_bus, rtu_meter=rtu_meter)
    )
    config = load_config(path)
    print(f"config: {path} (valid: {len(config.buses)} buses, {len(config.meters)} meters)\n")
    failed = False
    try:
        deadline = time.monotonic() + duration
        while True:
            readings = await read_once(config, list(config.meters))
            for r in readings:
                print(render_reading(r, config))
                failed |= r.quality != "good"
            if time.monotonic() >= deadline:
                break
            print()
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    finally:
        for s in servers:
            await s.stop()
        if socat is not None:
            socat.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                socat.wait(2)
    return 1 if failed else 0


def run_demo(duration: float = 0.0) -> int:
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        code = asyncio.run(_demo(Path(tmp), duration))
    sys.stdout.flush()
    return code
