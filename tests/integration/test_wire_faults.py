"""Faults on the wire, end to end: a peer that answers with the wrong function code or with bytes no
reply can be read from, serial ports that cannot be opened (missing, or a pty refusing parity), a
SunSpec scale factor out of range, and a closed stdout pipe. Real parts only: raw TCP peers written
here, socat ptys, the simulator and the command line in their own processes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.daemon.calibration import Reading
from collector.daemon.records import Event
from drivers.errors import BadReply, CannotOpen, Garbled
from drivers.modbus.rtu import crc16
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function
from drivers.serialport import SerialSettings
from tests.conftest import ROOT, PtyPair, Simulator, cli, free_port

V230_5 = [0x4366, 0x8000]  # 230.5 as a big-endian float32

#: what a peer sends for one request: (tid, unit, function code, address, count) -> bytes (None: it
#: hangs up)
Answer = Callable[[int, int, int, int, int], bytes | None]


def mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu


def registers(fc: int, count: int) -> bytes:
    words = (V230_5 * count)[:count]
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words)


def good(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, registers(fc, count))


class RawPeer:
    """A Modbus TCP "device" that answers each MBAP request with whatever ``answer`` makes of it.

    Threaded, so it serves a command line in another process as well as a transport in this one."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                peer.connections += 1
                sock: socket.socket = self.request
                buffer = b""
                while True:
                    try:
                        data = sock.recv(1024)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                    while len(buffer) >= 12:
                        tid, _, length, unit = struct.unpack(">HHHB", buffer[:7])
                        fc, address, count = struct.unpack(">BHH", buffer[7:12])
                        buffer = buffer[6 + length :]
                        peer.requests += 1
                        reply = peer.answer(tid, unit, fc, address, count)
                        if reply is None:
                            return
                        try:
                            sock.sendall(reply)
                        except OSError:
                            return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RawPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def tcp(port: int, **kw: object) -> ModbusTransport:
    return ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, **kw))  # type: ignore[arg-type]


# 1. the function code of the reply


def test_a_reply_with_another_function_code_is_a_bad_reply_for_that_request() -> None:
    def swapped(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
        if address == 100:  # an exception reply, but for the other function
            return mbap(tid, unit, bytes([(7 - fc) | 0x80, 2]))
        return mbap(tid, unit, registers(7 - fc, count))  # FC03 <-> FC04

    async def go(port: int) -> None:
        t = tcp(port, timeout=0.5, retries=0)
        try:
            with pytest.raises(BadReply, match=r"^unit 1: asked FC04, reply is FC03$"):
                await t.read(1, Function.INPUT, 0, 2)
            with pytest.raises(BadReply, match=r"^unit 1: asked FC03, reply is FC04$"):
                await t.read(1, Function.HOLDING, 0, 2)
            with pytest.raises(BadReply, match=r"asked FC03, reply is FC04"):
                await t.read(1, Function.HOLDING, 100, 2)
            assert t.timeouts == 0  # a reply came: no timeout, and the link stays up
        finally:
            t.close()

    with RawPeer(swapped) as peer:
        asyncio.run(go(peer.port))
        assert peer.connections == 1


# 2. bytes no reply can be read from


def garbage(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return bytes.fromhex("8c1f2e99d0c47a5b33e1f00d")


def short_length(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, registers(fc, count), length=2)  # pymodbus raised inside asyncio here


def long_length(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, registers(fc, count), length=200)


def rtu_frame(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    body = bytes([unit]) + registers(fc, count)
    return body + crc16(body)  # a serial server speaking RTU over TCP, configured as type tcp


def unknown_function(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, bytes([0x41, 4, 1, 2, 3, 4]))


GARBLED = {
    "garbage": (garbage, "protocol id 0x2E99, not 0: not Modbus TCP"),
    "short_length": (short_length, "MBAP length 2, but 7 bytes follow it"),
    "long_length": (long_length, "MBAP length 200, but 7 bytes follow it"),
    "rtu_frame": (
        rtu_frame,
        "protocol id 0x0443, not 0: not Modbus TCP; an RTU frame: a serial server wanting type rtu-over-tcp?",
    ),
    "unknown_function": (unknown_function, "function code 65 with 5 data bytes cannot be decoded"),
}


def unit_1_garbles(kind: str) -> Answer:
    bad = GARBLED[kind][0]

    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
        return (bad if unit == 1 else good)(tid, unit, fc, address, count)

    return answer


@pytest.mark.parametrize("kind", list(GARBLED))
def test_a_garbled_reply_is_counted_and_named_and_the_next_request_works(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def go(port: int) -> None:
        t = tcp(port, timeout=0.3, retries=1)
        try:
            with pytest.raises(Garbled) as caught:
                await t.read(1, Function.INPUT, 0, 2)
            assert str(caught.value).startswith(f"unit 1: unreadable reply ({GARBLED[kind][1]}): ")
            assert t.garbled == 2 and t.timeouts == 2  # both attempts, each on a fresh connection
            assert await t.read(2, Function.INPUT, 0, 2) == V230_5
        finally:
            t.close()

    caplog.set_level(logging.DEBUG, logger="asyncio")
    with RawPeer(unit_1_garbles(kind)) as peer:
        asyncio.run(go(peer.port))
        assert peer.connections == 3
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def two_meters(tmp: Path, port: int) -> Path:
    path = tmp / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: lan, type: tcp, host: 127.0.0.1, port: {port}, timeout: 300ms, retries: 0}}\n"
        "meters:\n"
        "  - {id: noisy, bus: lan, address: 1, model: eastron-sdm120, points: [voltage_l1, frequency]}\n"
        "  - {id: fine, bus: lan, address: 2, model: eastron-sdm120, points: [voltage_l1, frequency]}\n"
    )
    return path


@pytest.mark.parametrize("kind", ["garbage", "short_length"])
def test_read_names_a_garbled_reply_without_a_traceback(kind: str, tmp_path: Path) -> None:
    with RawPeer(unit_1_garbles(kind)) as peer:
        config = two_meters(tmp_path, peer.port)
        out = cli("read", "-c", str(config), "--json")
        table = cli("read", "-c", str(config))
    for run in (out, table):
        assert run.returncode == 1
        assert "Traceback" not in run.stdout + run.stderr and "Fatal error" not in run.stderr, run.stderr
        assert run.stderr == ""
    readings = {r["meter"]: r for r in map(json.loads, out.stdout.splitlines())}
    noisy, fine = readings["noisy"], readings["fine"]
    assert noisy["quality"] == "bad" and noisy["values"] == {}
    assert f"unit 1: unreadable reply ({GARBLED[kind][1]})" in noisy["failure"]
    assert noisy["errors"]["voltage_l1"] == noisy["failure"]  # per point as before, for compatibility
    assert fine["quality"] == "good" and fine["failure"] is None
    assert fine["values"] == {"voltage_l1": 230.5, "frequency": 230.5}
    assert table.stdout.count("unreadable reply") == 1


def test_the_bus_health_counts_garbled_replies_apart_from_silence(tmp_path: Path) -> None:
    from collector.config import load_config
    from collector.daemon.bus import BusWorker
    from collector.daemon.health import Health

    def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes | None:
        if unit == 1:
            return GARBLED["garbage"][0](tid, unit, fc, address, count)
        return b"" if unit == 3 else good(tid, unit, fc, address, count)  # unit 3 stays silent

    with RawPeer(answer) as peer:
        path = two_meters(tmp_path, peer.port)
        path.write_text(
            path.read_text() + "  - {id: mute, bus: lan, address: 3, model: eastron-sdm120, points: [voltage_l1]}\n"
        )
        config = load_config(path, check_files=False)
        health = Health(emit=lambda e: None)
        readings: list[Reading] = []
        worker = BusWorker(config.buses["lan"], list(config.meters), readings.append, health)

        async def go() -> None:
            slot = datetime.now(UTC).replace(microsecond=0)
            try:
                for m in config.meters:
                    await worker.poll(m, slot)
            finally:
                worker.reader.close()

        asyncio.run(go())
    bus = health.payload({}, None)["buses"]["lan"]
    assert [r.quality for r in readings] == ["bad", "good", "bad"]
    assert bus["garbled"] == 1 and bus["timeouts"] == 2  # the noisy meter's reply, and the mute one's silence


# 3. a SunSpec scale factor out of range


def test_a_scale_factor_out_of_range_fails_its_point_only(tmp_path: Path, simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "sunspec-inverter", "--tcp", f"127.0.0.1:{port}", "--static", "--set", "W_SF=400")
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: pv-lan, type: tcp, host: 127.0.0.1, port: {port}}}\n"
        "meters:\n  - {id: roof-pv, bus: pv-lan, address: 1, model: sunspec-inverter}\n"
    )
    out = cli("read", "-c", str(path), "--json", "--raw")
    table = cli("read", "-c", str(path))
    for run in (out, table):
        assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr, run.stderr
    r = json.loads(out.stdout)
    assert r["raw"]["m103_w_sf"] == 400
    assert r["errors"] == {"ac_power": "scale factor W_SF = 400 is outside -10..10"}
    assert r["quality"] == "partial" and r["failure"] is None
    assert {"frequency", "energy_yield_total", "dc_power", "voltage_l1"} <= set(r["values"])
    lines = [line.split() for line in table.stdout.splitlines()]
    assert ["ac_power", "error:", "scale", "factor", "W_SF", "=", "400", "is", "outside", "-10..10"] in lines
    assert any(line[:1] == ["frequency"] and line[-1] == "Hz" for line in lines)


def test_simulate_refuses_a_sunspec_point_it_does_not_have() -> None:
    out = cli("simulate", "--model", "sunspec-inverter", "--tcp", "127.0.0.1:1", "--set", "W_Sf=400")
    assert out.returncode == 2 and "--set W_Sf" in out.stderr and "W_SF=400" in out.stderr


# 4. serial ports that cannot be opened


def test_a_missing_serial_port_carries_the_os_reason(tmp_path: Path) -> None:
    from drivers.serialline import SerialLine

    missing = str(tmp_path / "ttyUSB9")

    async def go() -> None:
        t = ModbusTransport(Link(kind="rtu", serial=SerialSettings(missing, 9600), timeout=0.2))
        for _ in range(2):  # every attempt says why, not only the first
            with pytest.raises(CannotOpen, match=rf"^cannot open {missing} 9600 8N1: No such file or directory$"):
                await t.read(1, Function.HOLDING, 0, 1)
        line = SerialLine(SerialSettings(missing, 2400, parity="E"))
        with pytest.raises(CannotOpen, match=rf"^cannot open {missing} 2400 8E1: No such file or directory$"):
            await line.transact(b"\x68", lambda buffer: None)

    asyncio.run(go())


def test_a_port_in_use_by_another_program_says_so(pty_pair: PtyPair) -> None:
    import serial

    from drivers.serialline import SerialLine

    busy = "Resource temporarily unavailable (the port is in use by another program)"

    async def go() -> None:
        t = ModbusTransport(Link(kind="rtu", serial=SerialSettings(pty_pair.b, 9600), timeout=0.2))
        with pytest.raises(CannotOpen, match=rf"^cannot open {pty_pair.b} 9600 8N1: {re.escape(busy)}$"):
            await t.read(1, Function.HOLDING, 0, 1)
        line = SerialLine(SerialSettings(pty_pair.b, 9600, parity="N"))
        with pytest.raises(CannotOpen, match=rf"^cannot open {pty_pair.b} 9600 8N1: {re.escape(busy)}$"):
            await line.transact(b"\x68", lambda buffer: None)

    holder = serial.Serial(pty_pair.b, 9600, exclusive=True)  # e.g. a second daemon, or minicom
    try:
        asyncio.run(go())
    finally:
        holder.close()


def refusing_parity(pair: PtyPair, baudrate: int) -> None:
    """Make the pty refuse parity E at ``baudrate``: Linux's tcsetattr fails with EINVAL when none of
    the requested changes can be applied, and a pty cannot keep PARENB, so after an 8N1 open at the
    same rate an 8E1 open fails (a change of rate as well would have succeeded)."""
    import termios

    import serial

    serial.Serial(pair.b, baudrate).close()
    try:
        serial.Serial(pair.b, baudrate, parity="E").close()
    except termios.error:
        return
    pytest.skip("this kernel's ptys accept parity E")


@pytest.fixture
def second_pty(tmp_path: Path) -> Iterator[PtyPair]:
    folder = tmp_path / "second"
    folder.mkdir()
    pair = PtyPair(folder)
    pair.start()
    yield pair
    pair.stop()


def test_a_pty_refusing_parity_is_a_port_error_for_rtu_and_dlt645(
    pty_pair: PtyPair, second_pty: PtyPair, tmp_path: Path
) -> None:
    from drivers import registry
    from drivers.dlt645.device import Dlt645Reader
    from drivers.serialline import SerialLine

    refusing_parity(pty_pair, 9600)
    refusing_parity(second_pty, 2400)
    refused = "Invalid argument (the port refuses parity E; a pty does: use N in tests)"

    async def go() -> None:
        t = ModbusTransport(Link(kind="rtu", serial=SerialSettings(pty_pair.b, 9600, parity="E"), timeout=0.2))
        reader = Dlt645Reader(SerialLine(SerialSettings(second_pty.b, 2400, parity="E"), timeout=0.2))
        try:
            for _ in range(2):  # every poll: handled, never a termios.error
                with pytest.raises(CannotOpen) as caught:
                    await t.read(1, Function.HOLDING, 0, 1)
                assert str(caught.value) == f"cannot open {pty_pair.b} 9600 8E1: {refused}"
                r = await reader.read_meter("000000000042", registry.load("dlt645-2007"), ["energy_import"])
                assert isinstance(r.failure, CannotOpen)
                assert str(r.failure) == f"cannot open {second_pty.b} 2400 8E1: {refused}"
        finally:
            t.close()
            reader.close()

    asyncio.run(go())

    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: rs485-1, type: rtu, port: {pty_pair.b}, baudrate: 9600, parity: E, timeout: 200ms}}\n"
        f"  - {{name: rs485-2, type: dlt645, port: {second_pty.b}, baudrate: 2400, parity: E, timeout: 200ms}}\n"
        "meters:\n  - {id: sdm, bus: rs485-1, address: 1, model: eastron-sdm120}\n"
        '  - {id: dlt, bus: rs485-2, address: "000000000042", model: dlt645-2007}\n'
    )
    out = cli("read", "-c", str(path))
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.stdout.count(refused) == 2  # once per meter


# 5. `read` with a missing port: the reason once per meter


def test_read_with_a_missing_port_prints_the_reason_once_per_meter(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyUSB9")
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: rs485-1, type: rtu, port: {missing}, baudrate: 9600}}\n"
        "meters:\n  - {id: a, bus: rs485-1, address: 1, model: eastron-sdm120}\n"
        "  - {id: b, bus: rs485-1, address: 2, model: eastron-sdm120, points: [voltage_l1, frequency]}\n"
    )
    reason = f"cannot open {missing} 9600 8N1: No such file or directory"
    table = cli("read", "-c", str(path))
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert table.stdout.count(reason) == 2, table.stdout
    assert table.stdout.count("error:") == 2
    out = cli("read", "-c", str(path), "--json")
    assert out.returncode == 1
    b = [json.loads(line) for line in out.stdout.splitlines()][1]
    assert b["failure"] == reason and b["quality"] == "bad"
    assert b["errors"] == {"voltage_l1": reason, "frequency": reason}  # read --json as before


# 6. the daemon's bus worker: a port that cannot be opened, logged once per episode


def test_a_port_that_cannot_be_opened_is_logged_once_per_bus_until_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from collector.config import load_config
    from collector.daemon.bus import BusWorker
    from collector.daemon.health import Health
    from collector.simulator.meters import make_slave
    from collector.simulator.modbus import SerialServer

    pair = PtyPair(tmp_path)  # not started yet: the adapter is not plugged in
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: rs485-1, type: rtu, port: {pair.b}, baudrate: 9600, timeout: 200ms}}\n"
        "meters:\n"
        + "".join(
            f"  - {{id: m{i}, bus: rs485-1, address: {i}, model: eastron-sdm120, points: [voltage_l1]}}\n"
            for i in (1, 2, 3)
        )
    )
    config = load_config(path, check_files=False)
    meters = list(config.meters)
    events: list[Event] = []
    readings: list[Reading] = []
    worker = BusWorker(config.buses["rs485-1"], meters, readings.append, Health(emit=events.append))
    caplog.set_level(logging.INFO, logger="collector")

    def bus_log(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "collector.daemon.bus" and r.levelno == level]

    async def polls() -> None:
        slot = datetime.now(UTC).replace(microsecond=0)
        for _ in range(3):
            for m in meters:
                await worker.poll(m, slot)

    async def go() -> None:
        await polls()
        assert bus_log(logging.WARNING) == [
            f'bus "rs485-1": cannot open {pair.b} 9600 8N1: No such file or directory; retrying'
        ]
        assert bus_log(logging.INFO) == []
        assert sum(1 for e in events if e.name == "meter_offline") == 3  # Health: once per meter
        pair.start()  # plugged in
        slave, _ = make_slave(meters[0].model, [1, 2, 3], serial=True)
        server = SerialServer(slave, pair.a)
        await server.start()
        try:
            await polls()
        finally:
            worker.reader.close()
            await server.stop()
        assert len(bus_log(logging.WARNING)) == 1
        back = bus_log(logging.INFO)
        assert len(back) == 1 and back[0].startswith(f'bus "rs485-1": {pair.b} 9600 8N1 open again after ')

    try:
        asyncio.run(go())
    finally:
        pair.stop()
    assert [r.quality for r in readings[-3:]] == ["good"] * 3


# 7. a DL/T 645 line: noise is counted apart from silence and from an adapter's echo


@pytest.mark.parametrize(
    ("peer", "garbled"),
    [("silent", 0), ("echo", 0), ("bad-checksum", 1), ("cut-short", 1)],
)
def test_a_dlt645_line_counts_noise_apart_from_silence_and_echo(pty_pair: PtyPair, peer: str, garbled: int) -> None:
    import os
    import select

    from drivers import registry
    from drivers.dlt645 import frame
    from drivers.dlt645.device import Dlt645Reader
    from drivers.serialline import SerialLine

    address = "000000000042"
    reply = frame.build(address, 0x91, bytes.fromhex("00000100") + bytes.fromhex("07215301"))
    answers: dict[str, Callable[[bytes], bytes]] = {
        "silent": lambda request: b"",
        "echo": lambda request: request,  # a half-duplex adapter hears itself
        "bad-checksum": lambda request: reply[:-2] + bytes([(reply[-2] + 1) & 0xFF, 0x16]),
        "cut-short": lambda request: reply[: len(reply) // 2],
    }
    fd = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                request = os.read(fd, 256)
                os.write(fd, answers[peer](request))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    line = SerialLine(SerialSettings(pty_pair.b, 2400, parity="N"), timeout=0.3, retries=0)
    reader = Dlt645Reader(line)

    async def go() -> None:
        try:
            r = await reader.read_meter(address, registry.load("dlt645-2007"), ["energy_import"])
            assert r.failure is not None and not r.values
        finally:
            reader.close()

    try:
        asyncio.run(go())
    finally:
        stop.set()
        server.join(5)
        os.close(fd)
    assert line.timeouts >= 1
    assert (reader.garbled > 0) == bool(garbled), (peer, line.garbled, line.timeouts)
    assert reader.garbled in (0, line.timeouts)


# 8. a closed stdout pipe


def test_models_list_into_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "models", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -1` exiting before the list is written
    proc.stdout = None
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err.decode() and "BrokenPipeError" not in err.decode() and err == b"", err
    assert proc.returncode == 1
