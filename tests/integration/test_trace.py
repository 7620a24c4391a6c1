"""Frame traces (`--trace`): the bytes on the wire, per bus, with timing, and their bounds.

Real parts only: the simulator and the command line in their own processes, socat pty pairs, a raw
peer on a pty written here; the frames the trace must show are built here, CRC and checksum too,
without the project's own frame code."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers import trace
from drivers.modbus.transport import Link, ModbusTransport
from drivers.model import Function
from tests.conftest import ROOT, PtyPair, Simulator, cli, free_port, wait_until
from tests.integration.daemon_parts import site_config
from tests.mqtt_parts import Mosquitto

DLT645_ADDRESS = "210987654321"
LINE = re.compile(r"DEBUG drivers\.trace: (\S+) (TX|RX) (.*)$")


def crc16_modbus(data: bytes) -> bytes:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), low byte first, bit by bit."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def spaced(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def frames(stderr: str) -> list[tuple[str, str, str]]:
    """(bus, TX|RX, the rest of the line) of each trace line."""
    return [m.groups() for line in stderr.splitlines() if (m := LINE.search(line))]  # type: ignore[misc]


def site(tmp: Path, bus: str, meter: str) -> Path:
    path = tmp / "site.yaml"
    path.write_text(f"gateway: {{id: t}}\nbuses:\n  - {bus}\nmeters:\n  - {meter}\n")
    return path


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("kind", ["rtu", "rtu-over-tcp"])
def test_read_trace_shows_the_rtu_request_with_its_crc_and_the_reply(
    kind: str, pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    if kind == "rtu":
        simulator("--model", "eastron-sdm630", "--serial", pty_pair.a, "--ids", "1", "--static")
        bus = f"{{name: rs485-1, type: rtu, port: {pty_pair.b}, baudrate: 9600, timeout: 300ms}}"
    else:
        port = free_port()
        simulator("--model", "eastron-sdm630", "--rtu-over-tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")
        bus = f"{{name: rs485-1, type: rtu-over-tcp, host: 127.0.0.1, port: {port}, timeout: 300ms}}"
    config = site(tmp_path, bus, "{id: m1, bus: rs485-1, address: 1, model: eastron-sdm630, points: [voltage_l1]}")
    out = cli("read", "-c", str(config), "--json", "--trace")
    assert out.returncode == 0, out.stderr
    lines = frames(out.stderr)
    # FC04, input registers 0-1 (voltage L1, a float32) of unit 1: the ADU with its CRC, as on the wire
    request = bytes([0x01, 0x04, 0x00, 0x00, 0x00, 0x02])
    request += crc16_modbus(request)
    assert request.hex() == "01040000000271cb"
    assert lines[0] == ("rs485-1", "TX", f"8 bytes (first): {spaced(request)}")
    bus_name, direction, rest = lines[1]
    m = re.fullmatch(r"9 bytes after ([\d.]+) ms: ((?:[0-9A-F]{2} ){8}[0-9A-F]{2})", rest)
    assert (bus_name, direction) == ("rs485-1", "RX") and m, lines
    reply = hex_bytes(m.group(2))
    assert reply[:3] == bytes([0x01, 0x04, 0x04]) and crc16_modbus(reply[:-2]) == reply[-2:]
    assert float(m.group(1)) < 300
    # the bytes traced are the bytes the value came from
    reading = json.loads(out.stdout)
    assert reading["values"]["voltage_l1"] == pytest.approx(struct.unpack(">f", reply[3:7])[0])
    assert len(lines) == 2


def test_read_trace_shows_the_modbus_tcp_mbap_header(tmp_path: Path, simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}", "--ids", "3", "--static")
    config = site(
        tmp_path,
        f"{{name: lan-1, type: tcp, host: 127.0.0.1, port: {port}}}",
        "{id: m1, bus: lan-1, address: 3, model: eastron-sdm630, points: [voltage_l1]}",
    )
    out = cli("read", "-c", str(config), "--trace")
    assert out.returncode == 0, out.stderr
    lines = frames(out.stderr)
    assert len(lines) == 2, lines
    # MBAP: transaction id, protocol 0, length 6, unit 3; then the PDU: FC04 0000 0002; no CRC
    tx = re.fullmatch(r"12 bytes \(first\): ([0-9A-F]{2} [0-9A-F]{2}) 00 00 00 06 03 04 00 00 00 02", lines[0][2])
    assert lines[0][:2] == ("lan-1", "TX") and tx, lines
    rx = re.fullmatch(r"13 bytes after [\d.]+ ms: (.{5}) 00 00 00 07 03 04 04( [0-9A-F]{2}){4}", lines[1][2])
    assert lines[1][:2] == ("lan-1", "RX") and rx and rx.group(1) == tx.group(1), lines  # the same transaction id
    # -v alone is debug logging, not a trace of every frame
    quiet = cli("-v", "read", "-c", str(config))
    assert quiet.returncode == 0 and "drivers.trace" not in quiet.stderr and "DEBUG" in quiet.stderr


def dlt645_frame(address: str, control: int, data: bytes) -> bytes:
    """FE FE FE FE 68 A0..A5 68 C L DATA+33H CS 16 (DL/T 645-2007 §4), built from the standard."""
    body = bytes([0x68]) + bytes.fromhex(address)[::-1] + bytes([0x68, control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])


def test_read_trace_shows_dlt645_frames_with_the_wake_up_preamble(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    simulator("--model", "dlt645-2007", "--serial", pty_pair.a, "--baud", "2400", "--ids", DLT645_ADDRESS)
    config = site(
        tmp_path,
        f"{{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N, timeout: 300ms}}",
        f'{{id: d1, bus: rs485-2, address: "{DLT645_ADDRESS}", model: dlt645-2007, points: [energy_import]}}',
    )
    out = cli("read", "-c", str(config), "--json", "--trace")
    assert out.returncode == 0, out.stderr
    lines = frames(out.stderr)
    assert len(lines) == 2, lines
    # read data (11H), identifier 00010000H (forward active energy), sent little-endian
    request = dlt645_frame(DLT645_ADDRESS, 0x11, (0x00010000).to_bytes(4, "little"))
    assert spaced(request).startswith("FE FE FE FE 68 21 43 65 87 09 21 68 11 04 33 33 34 33")
    assert lines[0] == ("rs485-2", "TX", f"{len(request)} bytes (first): {spaced(request)}")
    m = re.fullmatch(r"(\d+) bytes after ([\d.]+) ms: ([0-9A-F ]+)", lines[1][2])
    assert lines[1][:2] == ("rs485-2", "RX") and m, lines
    reply = hex_bytes(m.group(3))
    assert int(m.group(1)) == len(reply)
    frame = reply.lstrip(b"\xfe")  # a meter may send the wake-up bytes too
    assert frame[:8] == bytes.fromhex("68" + DLT645_ADDRESS)[:1] + bytes.fromhex(DLT645_ADDRESS)[::-1] + b"\x68"
    assert frame[8] == 0x91 and frame[-1] == 0x16 and sum(frame[:-2]) & 0xFF == frame[-2]
    assert frame[10:14] == request[14:18]  # the identifier asked for
    bcd = bytes((b - 0x33) & 0xFF for b in frame[14:18])[::-1].hex()  # XXXXXX.XX, low byte first
    assert json.loads(out.stdout)["values"]["energy_import"] == pytest.approx(int(bcd) / 100)


def test_trace_shows_a_timeout_and_a_partial_reply(pty_pair: PtyPair, tmp_path: Path) -> None:
    """A meter that is absent: the request and "timeout, no bytes"; one that stops after three bytes:
    those three bytes. The peer is a pty end written to by hand."""
    config = site(
        tmp_path,
        f"{{name: rs485-1, type: rtu, port: {pty_pair.b}, baudrate: 9600, timeout: 300ms, retries: 0}}",
        "{id: m7, bus: rs485-1, address: 7, model: eastron-sdm630, points: [voltage_l1]}",
    )
    out = cli("read", "-c", str(config), "--trace")
    assert out.returncode == 1
    lines = frames(out.stderr)
    request = bytes([0x07, 0x04, 0x00, 0x00, 0x00, 0x02])
    assert lines[0] == ("rs485-1", "TX", f"8 bytes (first): {spaced(request + crc16_modbus(request))}")
    m = re.fullmatch(r"timeout after ([\d.]+) ms, no bytes", lines[1][2])
    assert lines[1][:2] == ("rs485-1", "RX") and m, lines
    assert 300 <= float(m.group(1)) < 1000

    fd = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
    while select.select([fd], [], [], 0)[0]:  # the request above, which nobody read
        os.read(fd, 64)
    asked = bytearray()

    def half_a_reply() -> None:  # read the request, answer its first three bytes only
        deadline = time.monotonic() + 30
        while len(asked) < 8 and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                asked.extend(os.read(fd, 64))
        os.write(fd, bytes([0x07, 0x04, 0x04]))

    peer = threading.Thread(target=half_a_reply, daemon=True)
    peer.start()
    try:
        out = cli("read", "-c", str(config), "--trace")
        peer.join(30)
    finally:
        os.close(fd)
    assert out.returncode == 1 and len(asked) == 8
    lines = frames(out.stderr)
    assert lines[0][2].endswith(spaced(bytes(asked))), lines  # what the peer got is what the trace says
    assert re.fullmatch(r"timeout after [\d.]+ ms, 3 bytes: 07 04 04", lines[1][2]), lines


class Kept(logging.Handler):
    """The records of the trace logger, kept (real logging, one more handler)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("drivers.trace")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Kept:
        self.logger.addHandler(self)
        trace.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        trace.enable(False)
        self.logger.removeHandler(self)

    def frames(self) -> list[str]:
        return [m for r in self.records if re.match(r"lan-1 (TX|RX) ", m := r.getMessage())]

    def notices(self) -> list[int]:
        found = (re.fullmatch(r"lan-1: (\d+) trace lines suppressed .*", r.getMessage()) for r in self.records)
        return [int(m.group(1)) for m in found if m]


def test_the_rate_bound_suppresses_lines_and_says_how_many(simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")

    async def go() -> float:
        """300 reads (600 frames) as fast as the simulator answers; how long they took."""
        t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, timeout=1.0, name="lan-1"))
        try:
            started = time.monotonic()
            for _ in range(300):
                await t.read(1, Function.INPUT, 0, 2)
            return time.monotonic() - started
        finally:
            t.close()  # says how many lines were left out since the last one written

    with Kept() as kept:
        took = asyncio.run(go())
    written = len(kept.frames())
    assert trace.BURST <= written <= trace.BURST + trace.RATE * took + 1, (written, took)
    assert written < 500 and kept.notices()
    # every frame is a line or counted in a "suppressed" line, said before the next line let through
    assert written + sum(kept.notices()) == 600
    assert all(r.levelno == logging.DEBUG for r in kept.records)


def test_scan_trace_is_bounded_too(simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")
    started = time.monotonic()
    out = cli("scan", "--host", f"127.0.0.1:{port}", "--ids", "1-247", "--trace")
    took = time.monotonic() - started
    assert out.returncode == 0 and "1: eastron-sdm630" in out.stdout, out.stdout + out.stderr
    lines = frames(out.stderr)
    bus = f"127.0.0.1:{port}"  # no name in a scan: the host and port
    assert lines[0][:2] == (bus, "TX") and re.fullmatch(r".{5} 00 00 00 06 01 0[34] .*", lines[0][2].split(": ")[1])
    suppressed = re.findall(rf"{re.escape(bus)}: (\d+) trace lines suppressed", out.stderr)
    assert suppressed and len(lines) + sum(map(int, suppressed)) >= 2 * 247
    assert len(lines) <= trace.BURST + trace.RATE * took + 1


def test_tracing_turns_itself_off_when_its_budget_is_used(simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")

    async def go() -> None:
        t = ModbusTransport(Link(kind="tcp", host="127.0.0.1", port=port, timeout=1.0, name="lan-1"))
        try:
            for _ in range(10):
                await t.read(1, Function.INPUT, 0, 2)
        finally:
            t.close()

    with Kept() as kept:
        trace.enable(lines=5)
        asyncio.run(go())
        assert not trace.ON
    assert len(kept.frames()) == 5
    assert kept.records[-1].levelno == logging.WARNING and "tracing is off" in kept.records[-1].getMessage()


def test_run_trace_names_each_frame_by_its_bus(tmp_path: Path, simulator: type[Simulator], broker: Mosquitto) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=port, meters=1)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "-c", str(config), "--trace"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

        def traced() -> str:
            text = log.read_text(errors="replace")
            return text if " lan RX " in text else ""

        try:
            text = wait_until(traced, 30, "a traced reply")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
    tx = re.search(r"DEBUG drivers\.trace: lan TX 12 bytes \(first\): .{5} 00 00 00 06 01 04 ", text)
    assert tx, text
    assert re.search(r"DEBUG drivers\.trace: lan RX \d+ bytes after [\d.]+ ms: .{5} 00 00 ", text), text
