"""A data centre of our own (asyncio TCP server), written from docs/datacenter.md, for tests.

It speaks one Variant strictly (its CRC check does not accept other forms), keeps every value it
receives as a Record (building, gateway, meter, function, coding, value), and can misbehave on
request: refuse every login, withhold acks, close after login, send garbage before its replies,
or never answer at all. Like Q (``src/server.js:41-50``) it ignores data before ``pass``; like A
(``AuthPacketHandler.java:85,91``) it closes the connection after a failed login.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime

from collector.uplink.crypto import CryptoError, decrypt, encrypt, login_digest
from collector.uplink.frame import Frame, FrameDecoder, encode_frame
from collector.uplink.messages import (
    Ack,
    AckForm,
    Common,
    Heartbeat,
    LoginChallenge,
    LoginDigest,
    LoginRequest,
    LoginResult,
    Message,
    MessageError,
    Packet,
    PeriodConfig,
    Query,
    Report,
    ServerTime,
    build,
    parse,
)
from collector.uplink.variant import Variant


@dataclass(frozen=True, slots=True)
class Record:
    """One value as the data centre stores it."""

    building_id: str
    gateway_id: str
    operation: str  #: report | continuous | reply
    sequence: str
    time: datetime
    meter: str
    function: str
    coding: str
    value: str | None
    error: str | None


@dataclass
class DataCenter:
    variant: Variant
    login_key: bytes
    aes_key: bytes
    challenge: str = "46217562"
    refuse_login: bool = False
    withhold_acks: bool = False
    silent: bool = False  #: accept connections, read, never answer
    close_after_login: bool = False
    garbage: bytes = b""  #: sent before every reply
    report_ack: AckForm | None = "continuous_ack"  #: None: reports get no ack (A, Y)
    time: datetime = field(default_factory=lambda: datetime(2024, 5, 23, 18, 30, 0))
    records: list[Record] = field(default_factory=list)
    packets: list[Packet] = field(default_factory=list)
    logins: list[bool] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one); again after ``stop``: the data centre is back."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop_connections(self) -> None:
        for w in self._writers:
            w.close()

    async def push(self, message: Message, common: Common) -> None:
        """Send a DC → collector command (query, period) on every open connection."""
        for w in list(self._writers):
            await self._send(w, message, common)

    async def _send(self, writer: asyncio.StreamWriter, message: Message, common: Common) -> None:
        text = build(message, common, self.variant)
        writer.write(self.garbage + encode_frame(encrypt(text, self.aes_key, self.variant), 0, self.variant))
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        decoder = FrameDecoder(self.variant)
        authed = False
        try:
            while chunk := await reader.read(65536):
                for event in decoder.feed(chunk):
                    if not isinstance(event, Frame):
                        self.problems.append(event.reason)
                        continue
                    try:
                        packet = parse(decrypt(event.payload, self.aes_key, self.variant), self.variant)
                    except (CryptoError, MessageError) as exc:
                        self.problems.append(str(exc))
                        continue
                    self.packets.append(packet)
                    if self.silent:
                        continue
                    authed = await self._answer(writer, packet, authed)
        except (ConnectionError, _Closed):
            pass
        finally:
            self._writers.remove(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, packet: Packet, authed: bool) -> bool:
        common, message = packet.common, packet.message
        if isinstance(message, LoginRequest):
            await self._send(writer, LoginChallenge(self.challenge), common)
        elif isinstance(message, LoginDigest):
            expected = login_digest(self.challenge, self.login_key, self.variant)
            ok = not self.refuse_login and message.md5 == expected
            self.logins.append(ok)
            await self._send(writer, LoginResult(ok), common)
            if not ok or self.close_after_login:
                raise _Closed
            return True
        elif not authed:
            self.problems.append(f"{type(message).__name__} before login: ignored")
        elif isinstance(message, Heartbeat):
            await self._send(writer, ServerTime(self.time), common)
        elif isinstance(message, Report):
            for meter in message.meters:
                for fn in meter.functions:
                    value = None if fn.value is None else str(fn.value)
                    self.records.append(
                        Record(
                            common.building_id,
                            common.gateway_id,
                            message.operation,
                            message.sequence,
                            message.time,
                            meter.id,
                            fn.id,
                            fn.coding,
                            value,
                            fn.error,
                        )
                    )
            if self.withhold_acks or message.operation == "reply":
                return authed
            if message.operation == "continuous":
                await self._send(writer, Ack("continuous_ack"), common)
            elif self.report_ack is not None:
                await self._send(writer, Ack(self.report_ack, sequence=message.sequence), common)
        return authed

    def values(self, function: str = "1") -> dict[tuple[str, datetime], str | None]:
        """(meter, time) → value of one function id, the last one received."""
        return {(r.meter, r.time): r.value for r in self.records if r.function == function}


class _Closed(Exception):
    pass


__all__ = ["DataCenter", "PeriodConfig", "Query", "Record"]
