"""`meter-collector demo`: the whole pipeline on one machine, no hardware, no root.

Simulated meters on Modbus TCP, RTU over TCP and, when socat is installed, RTU on a pty pair (a
virtual RS-485 line, with one address nobody answers to); the daemon with a temporary buffer; a
Mosquitto as the platform's broker (bash scripts/demo installs it); and a live view of what the
platform receives, through the project's own MQTT module. Midway the daemon's uplink is cut for a
few seconds: the readings taken during the cut wait in the buffer and arrive when it is back, and
the summary checks that seq has no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.config import load_config
from collector.daemon.buffer import Buffer
from collector.daemon.publisher import Subscription
from collector.daemon.service import Daemon
from collector.simulator.meters import SimulatedMeter
from collector.simulator.modbus import SerialServer, Slave, TcpServer
from drivers import registry

GATEWAY = "demo-gw"
INTERVAL = "2s"

DEMO_CONFIG = """\
# Written by `meter-collector demo`: simulated meters on this machine.
gateway: {{id: {gw}, site: demo, building: B01}}
storage: {{path: {tmp}/buffer.db}}
mqtt: {{url: "mqtt://127.0.0.1:{mqtt_port}", health_interval: 5s}}
buses:
  - {{name: lan, type: tcp, host: 127.0.0.1, port: {tcp_port}, timeout: 500ms}}
  - {{name: serial-server, type: rtu-over-tcp, host: 127.0.0.1, port: {rot_port}, timeout: 500ms}}
{rtu_bus}meters:
  - {{id: main-incomer, bus: lan, address: 1, model: eastron-sdm630, interval: {iv}, category: "01000",
     points: [energy_import, active_power, voltage_l1], calibration: {{ct_ratio: 40}}}}
  - {{id: lighting-b1, bus: lan, address: 2, model: eastron-sdm120, interval: {iv}, category: "01A00",
     points: [energy_import, active_power]}}
  - {{id: water-main, bus: serial-server, address: 1, model: tuf-2000m, interval: {iv}, category: "02000",
     points: [volume, flow_rate]}}
{rtu_meters}"""

RTU_BUS = "  - {{name: rs485-1, type: rtu, port: {dev}, baudrate: 9600, parity: N, timeout: 300ms}}\n"
RTU_METERS = (
    '  - {{id: hvac-chiller, bus: rs485-1, address: 7, model: chint-dtsu666, interval: {iv}, category: "01B00",'
    " points: [energy_import, active_power, current_l1]}}\n"
    '  - {{id: spare-feeder, bus: rs485-1, address: 9, model: eastron-sdm120, interval: {iv}, category: "01D00",'
    " points: [energy_import]}}\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Relay:
    """The gateway's uplink, as a TCP relay the demo can cut."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in self.writers:
            w.close()
        self.writers.clear()


class View:
    """The platform's side: a subscriber printing what arrives."""

    def __init__(self, port: int) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seqs: set[int] = set()
        self.readings: dict[str, int] = {}
        self.subscription = Subscription("127.0.0.1", port, f"meters/{GATEWAY}/#", self.inbox.put)

    def show(self) -> None:
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            kind = topic.rsplit("/", 1)[-1]
            body = json.loads(payload)
            if "seq" in body:
                self.seqs.add(body["seq"])
            if kind == "reading":
                self.readings[body["meter"]] = self.readings.get(body["meter"], 0) + 1
                values = "  ".join(f"{k} {v:.10g}" for k, v in list(body["values"].items())[:3])
                late = "  (from the buffer)" if time.time() - _ts(body["ts"]) > 3 else ""
                print(
                    f"  seq {body['seq']:>4}  {body['slot'][11:19]}  {body['meter']:<13} {body['quality']:<7} "
                    f"{values or body.get('errors', '')}{late}"
                )
            elif kind == "events":
                detail = {k: v for k, v in body.items() if k not in ("v", "gateway", "seq", "ts", "event")}
                print(f"  seq {body['seq']:>4}  EVENT {body['event']}: {detail}")
            elif kind == "health":
                print(
                    f"  health: buffer {body['buffer']['depth']} unsent, mqtt published {body['mqtt']['published']}"
                    f" acked {body['mqtt']['acked']}"
                )
            elif kind == "status":
                print(f"  status: {body['state']}")

    def close(self) -> None:
        self.subscription.close()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class NoBroker(Exception):
    """Mosquitto is not installed, or did not start."""


async def _broker(tmp: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """Debian's Mosquitto on a free loopback port, with a config of the demo's own."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        raise NoBroker("the demo needs Mosquitto: apt-get install mosquitto (bash scripts/demo installs it)")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(250):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                print(f"broker: Mosquitto on 127.0.0.1:{port}")
                return port, proc
        await asyncio.sleep(0.02)
    proc.kill()
    raise NoBroker(f"Mosquitto ({exe}) did not start on 127.0.0.1:{port}")


async def _demo(tmp: Path, duration: float, outage: float) -> int:
    servers: list[Any] = []
    socat: subprocess.Popen[bytes] | None = None
    broker: subprocess.Popen[bytes] | None = None
    relay: Relay | None = None
    view: View | None = None
    daemon: Daemon | None = None
    try:
        rtu_bus = rtu_meters = ""
        lan = Slave(
            {
                1: SimulatedMeter(registry.load("eastron-sdm630"), 1),
                2: SimulatedMeter(registry.load("eastron-sdm120"), 2),
            },
            silent_unknown=False,
        )
        rot = Slave({1: SimulatedMeter(registry.load("tuf-2000m"), 1)})
        tcp, rot_server = TcpServer(lan, "127.0.0.1", 0), TcpServer(rot, "127.0.0.1", 0, rtu=True)
        for s in (tcp, rot_server):
            await s.start()
            servers.append(s)
        if shutil.which("socat"):
            a, b = tmp / "ttySIM", tmp / "ttyGW"
            socat = subprocess.Popen(
                ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
            )
            for _ in range(200):
                if a.exists() and b.exists():
                    break
                await asyncio.sleep(0.02)
            rtu = SerialServer(Slave({7: SimulatedMeter(registry.load("chint-dtsu666"), 7)}), str(a), 9600)
            await rtu.start()
            servers.append(rtu)
            rtu_bus, rtu_meters = RTU_BUS.format(dev=b), RTU_METERS.format(iv=INTERVAL)
        else:
            print("(socat not found: no virtual RS-485 line; `apt-get install socat` adds one)")
        broker_port, broker = await _broker(tmp)
        relay = Relay(broker_port)
        await relay.start()
        path = tmp / "demo.yaml"
        path.write_text(
            DEMO_CONFIG.format(
                gw=GATEWAY,
                tmp=tmp,
                mqtt_port=relay.port,
                tcp_port=tcp.port,
                rot_port=rot_server.port,
                rtu_bus=rtu_bus,
                rtu_meters=rtu_meters,
                iv=INTERVAL,
            )
        )
        config = load_config(path)
        print(f"config: {path} ({len(config.buses)} buses, {len(config.meters)} meters, every {INTERVAL})")
        view = View(broker_port)
        daemon = await Daemon.open(config)
        await daemon.start()
        print("the platform receives:\n")
        started = time.monotonic()
        cut_at = duration / 3 if outage and duration >= 3 * outage else None
        restored = False
        while duration <= 0 or time.monotonic() - started < duration:
            await asyncio.sleep(0.2)
            view.show()
            elapsed = time.monotonic() - started
            if cut_at is not None and relay.server is not None and not restored and elapsed >= cut_at:
                await relay.cut()
                print(f"\n  --- uplink cut for {outage:g} s: readings wait in the buffer ---\n")
            if cut_at is not None and relay.server is None and not restored and elapsed >= cut_at + outage:
                await relay.start()
                restored = True
                print("\n  --- uplink back: the buffered readings follow ---\n")
    finally:
        # Whatever failed, nothing is left running (socat would hold the caller's stdout open).
        if daemon is not None:
            await daemon.stop()
            await asyncio.sleep(0.5)
        if view is not None:
            view.show()
            view.close()
        if relay is not None:
            await relay.cut()
        for s in servers:
            await s.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        if socat is not None:
            socat.terminate()
    return _summary(view, tmp)


def _summary(view: View | None, tmp: Path) -> int:
    if view is None:
        return 1
    seqs = sorted(view.seqs)
    gap_free = bool(seqs) and seqs == list(range(seqs[0], seqs[-1] + 1))
    buffer = Buffer(tmp / "buffer.db")
    left = buffer.depth()
    buffer.close()
    print("\nsummary:")
    for meter, n in sorted(view.readings.items()):
        print(f"  {meter:<13} {n} readings")
    if seqs:
        print(
            f"  seq {seqs[0]}..{seqs[-1]} received, {'no gap' if gap_free else 'GAPS'}; "
            f"{left} message(s) left in the buffer"
        )
    return 0 if gap_free else 1


def run_demo(duration: float = 20.0, outage: float = 5.0) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mc-demo-") as tmp:
        try:
            code = asyncio.run(_demo(Path(tmp), duration, outage))
        except KeyboardInterrupt:
            code = 0
        except NoBroker as exc:
            print(f"demo: {exc}", file=sys.stderr)
            code = 2
    sys.stdout.flush()
    return code
