"""A minimal MQTT broker (3.1.1 and 5) for `meter-collector demo` on machines without Mosquitto.

Enough for one gateway and one viewer on loopback: CONNECT, PUBLISH at QoS 0 and 1 (PUBACK), SUBSCRIBE
with + and # wildcards, retained messages, PINGREQ, DISCONNECT and the Last Will. No persistence,
no authentication, no QoS 2: never expose it, and use a real broker anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _string(data: bytes, i: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, i)
    return data[i + 2 : i + 2 + n].decode(), i + 2 + n


def _skip_props(data: bytes, i: int) -> int:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return i + n


def matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    v5: bool
    subs: list[str] = field(default_factory=list)
    will: tuple[str, bytes, bool] | None = None
    next_id: int = 1

    def send_publish(self, topic: str, payload: bytes, retain: bool) -> None:
        t = topic.encode()
        body = struct.pack(">H", len(t)) + t + (b"\x00" if self.v5 else b"") + payload
        self.writer.write(_packet(PUBLISH, 1 if retain else 0, body))


class MiniBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.sessions: set[_Session] = set()
        self.retained: dict[str, bytes] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for s in list(self.sessions):
                s.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _route(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        for s in list(self.sessions):
            if any(matches(p, topic) for p in s.subs):
                s.send_publish(topic, payload, False)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        head = (await reader.readexactly(1))[0]
        n = shift = 0
        while True:
            b = (await reader.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return head >> 4, head & 0x0F, await reader.readexactly(n)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: _Session | None = None
        clean = False
        try:
            kind, _, data = await self._read(reader)
            if kind != CONNECT:
                return
            _, i = _string(data, 0)
            level, flags = data[i], data[i + 1]
            v5 = level == 5
            i += 4  # level, flags, keepalive
            if v5:
                i = _skip_props(data, i)
            _, i = _string(data, i)  # client id
            session = _Session(writer, v5)
            if flags & 0x04:  # will
                if v5:
                    i = _skip_props(data, i)
                wtopic, i = _string(data, i)
                (n,) = struct.unpack_from(">H", data, i)
                session.will = (wtopic, data[i + 2 : i + 2 + n], bool(flags & 0x20))
            writer.write(_packet(CONNACK, 0, b"\x00\x00\x00" if v5 else b"\x00\x00"))
            self.sessions.add(session)
            while True:
                kind, pflags, data = await self._read(reader)
                if kind == PUBLISH:
                    qos, retain = (pflags >> 1) & 3, bool(pflags & 1)
                    topic, i = _string(data, 0)
                    pid = None
                    if qos:
                        (pid,) = struct.unpack_from(">H", data, i)
                        i += 2
                    if v5:
                        i = _skip_props(data, i)
                    self._route(topic, data[i:], retain)
                    if pid is not None:
                        writer.write(_packet(PUBACK, 0, struct.pack(">H", pid)))
                elif kind == SUBSCRIBE:
                    (pid,) = struct.unpack_from(">H", data, 0)
                    i = _skip_props(data, 2) if v5 else 2
                    granted = bytearray()
                    while i < len(data):
                        pattern, i = _string(data, i)
                        i += 1  # options
                        session.subs.append(pattern)
                        granted.append(1)
                    writer.write(_packet(SUBACK, 0, struct.pack(">H", pid) + (b"\x00" if v5 else b"") + granted))
                    for topic, payload in self.retained.items():
                        if matches(pattern, topic):
                            session.send_publish(topic, payload, True)
                elif kind == PINGREQ:
                    writer.write(_packet(PINGRESP, 0, b""))
                elif kind == DISCONNECT:
                    clean = True
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, struct.error, UnicodeDecodeError):
            pass
        finally:
            if session is not None:
                self.sessions.discard(session)
                if session.will and not clean:
                    self._route(*session.will)
            writer.close()
