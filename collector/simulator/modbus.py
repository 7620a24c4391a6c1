"""The slave side of Modbus, for the simulator: TCP (MBAP), RTU over TCP, RTU on a serial device.

Written on the frame level rather than on pymodbus's server because the simulator must behave like
a real RS-485 bus where pymodbus does not (docs/reference/libraries.md): a unit id nobody answers to
stays *silent* on a serial line (pymodbus answers exception 4), and replies can be delayed by the
time the bytes would take on the wire at the configured baud rate, so bus timing can be measured on
a pty, which ignores baud rates. Being independent of pymodbus also makes the integration tests a
real cross-check of our client (and Debian's mbpoll cross-checks this server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from collector.simulator.serial import SerialPortServer
from drivers.modbus.rtu import crc16, rtu_frame

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
GATEWAY_TARGET_FAILED = 11


class Device(Protocol):
    """A slave's registers: the words asked for, or a Modbus exception code."""

    def read(self, function: int, address: int, count: int) -> list[int] | int: ...


class Slave:
    """Answers PDUs for a set of unit ids; counts what it was asked."""

    def __init__(
        self,
        devices: dict[int, Device],
        *,
        baudrate: int | None = None,
        silent_unknown: bool = True,
        turnaround: float = 0.0,
    ) -> None:
        self.devices = devices
        self.baudrate = baudrate  #: emulate the wire time of request and reply at this rate
        #: seconds a meter takes from the end of a request to the start of its reply (real meters: a
        #: few ms to 50 ms and more); added to every answer
        self.turnaround = turnaround
        self.silent_unknown = silent_unknown
        self.requests: Counter[int] = Counter()  #: per unit id
        self.unanswered = 0
        #: extra reply delay per request (unit, function, address) -> seconds: a slow meter, for tests
        self.delay_for: Callable[[int, int, int], float] | None = None

    def extra_delay(self, unit: int, pdu: bytes) -> float:
        if self.delay_for is None or len(pdu) < 3:
            return 0.0
        return self.delay_for(unit, pdu[0], struct.unpack(">H", pdu[1:3])[0])

    def answer(self, unit: int, pdu: bytes) -> bytes | None:
        """The reply PDU, or None for silence."""
        device = self.devices.get(unit)
        if device is None:
            self.unanswered += 1
            return None if self.silent_unknown else bytes([pdu[0] | 0x80, GATEWAY_TARGET_FAILED])
        self.requests[unit] += 1
        fc = pdu[0]
        if fc not in (3, 4):
            return bytes([fc | 0x80, ILLEGAL_FUNCTION])
        if len(pdu) != 5:
            return bytes([fc | 0x80, ILLEGAL_VALUE])
        address, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= 125:
            return bytes([fc | 0x80, ILLEGAL_VALUE])
        if address + count > 0x10000:
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        words = device.read(fc, address, count)
        if isinstance(words, int):
            return bytes([fc | 0x80, words])
        return bytes([fc, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)

    def wire_delay(self, request_bytes: int, reply_bytes: int) -> float:
        """Seconds the request and reply take on the wire (8N1: 10 bits a character), plus the 3.5
        characters of silence a slave needs to see that the request frame has ended."""
        if not self.baudrate:
            return 0.0
        return (request_bytes + reply_bytes + 3.5) * 10 / self.baudrate


def split_rtu(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take one request frame off the front of ``buffer``: (unit, PDU), or None if incomplete.

    Frames with a bad CRC are skipped one byte at a time (resynchronisation after noise).
    """
    while len(buffer) >= 4:
        fc = buffer[1]
        if fc in (1, 2, 3, 4, 5, 6):
            need = 8
        elif fc in (15, 16):
            if len(buffer) < 7:
                return None
            need = 9 + buffer[6]
        else:
            need = len(buffer)  # unknown function: the whole burst is one frame or noise
        if len(buffer) < need:
            return None
        frame = bytes(buffer[:need])
        if crc16(frame[:-2]) == frame[-2:]:
            del buffer[:need]
            return frame[0], frame[1:-2]
        del buffer[:1]
    return None


class SerialServer(SerialPortServer):
    """RTU slave on a serial device (a real port or one end of a socat pty pair)."""

    def __init__(self, slave: Slave, device: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1) -> None:
        super().__init__(device, baudrate, parity, stopbits)
        self.slave = slave

    def handle(self, buffer: bytearray) -> list[tuple[bytes, float]]:
        out = []
        while (frame := split_rtu(buffer)) is not None:
            unit, pdu = frame
            reply = self.slave.answer(unit, pdu)
            if reply is None:
                continue
            data = rtu_frame(unit, reply)
            delay = (
                self.slave.wire_delay(len(pdu) + 3, len(data))
                + self.slave.turnaround
                + self.slave.extra_delay(unit, pdu)
            )
            out.append((data, delay))
        return out


class TcpServer:
    """Modbus TCP (MBAP) slave, or with ``rtu=True`` an RTU-over-TCP serial server."""

    def __init__(self, slave: Slave, host: str, port: int, *, rtu: bool = False) -> None:
        self.slave = slave
        self.host = host
        self.port = port
        self.rtu = rtu
        self._server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                out = await (self._rtu_request(reader) if self.rtu else self._mbap_request(reader))
                if out is None:
                    continue
                delay = self.slave.wire_delay(8, len(out)) + self.slave.turnaround
                if delay:
                    await asyncio.sleep(delay)
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _mbap_request(self, reader: asyncio.StreamReader) -> bytes | None:
        header = await reader.readexactly(7)
        tid, pid, length, unit = struct.unpack(">HHHB", header)
        pdu = await reader.readexactly(length - 1)
        if pid != 0:
            return None
        reply = self.slave.answer(unit, pdu)
        if reply is None:
            return None
        return struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply

    async def _rtu_request(self, reader: asyncio.StreamReader) -> bytes | None:
        buffer = bytearray(await reader.readexactly(8))
        if buffer[1] in (15, 16):
            buffer += await reader.readexactly(1 + buffer[6])
        frame = split_rtu(buffer)
        if frame is None:
            return None
        unit, pdu = frame
        reply = self.slave.answer(unit, pdu)
        return None if reply is None else rtu_frame(unit, reply)
