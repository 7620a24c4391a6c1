"""One connection to a data centre: login, heartbeats, reports and 断点续传, with timeouts.

Order (docs/datacenter.md §Session; Q ``src/server.js:41-50``, Z ``NetDAU485.js``): ``request`` →
``sequence`` → ``md5`` → ``result``; only after ``pass`` heartbeats and data. Packets are sent
stop-and-wait: one data packet, then its ack (D: "one response for each piece of data"), so an
ack without a ``<sequence>`` belongs to the packet in flight.

No outbox here: ``ReportSource`` is what the daemon implements (pending rows oldest first, an
acknowledgement callback, collect-now for ``query``, the period for ``config``). ``run_forever``
reconnects with jittered exponential backoff; a refused login backs off like a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from collector.uplink.crypto import CryptoError, decrypt, encrypt, login_digest
from collector.uplink.frame import Frame, FrameDecoder, encode_frame
from collector.uplink.messages import (
    Ack,
    Common,
    Heartbeat,
    LoginChallenge,
    LoginDigest,
    LoginRequest,
    LoginResult,
    Message,
    MessageError,
    MeterRecord,
    Packet,
    PeriodAck,
    PeriodConfig,
    Query,
    Report,
    ServerTime,
    build,
    parse,
)
from collector.uplink.variant import Variant

log = logging.getLogger("collector.uplink")


class SessionError(Exception):
    """The connection failed: closed, a reply timed out, or the data centre refused the login."""


class ReplyTimeout(SessionError):
    """The data centre did not answer in time; the connection may still be usable."""


class LoginRefused(SessionError):
    """``<result>fail</result>``: wrong key, wrong MD5 order/case, or ids the platform does not know."""


@dataclass(frozen=True, slots=True)
class Settings:
    common: Common
    login_key: bytes  #: the MD5 认证密钥
    aes_key: bytes  #: 16 bytes; often the same as login_key
    variant: Variant = field(default_factory=Variant)
    heartbeat: float = 60.0  #: seconds between ``notify`` (D: every minute; offline after 5)
    reply_timeout: float = 10.0  #: for sequence, result, time and acks
    idle_timeout: float = 300.0  #: no byte at all for this long: the connection is dead (D: 5 min)
    batch: int = 100  #: continuous packets per resend round


@dataclass(frozen=True, slots=True)
class Pending:
    """One period's values not yet acknowledged by this data centre."""

    key: int  #: outbox position, unique and increasing; sent as ``<sequence>``
    time: datetime  #: the period
    meters: tuple[MeterRecord, ...]
    resend: bool = False  #: sent before (any connection): goes as ``continuous``


class ReportSource(Protocol):
    async def pending(self, limit: int) -> Sequence[Pending]:
        """Unacknowledged periods, oldest first, at most ``limit``."""

    async def acknowledged(self, item: Pending) -> None:
        """The data centre confirmed ``item`` (or the variant needs no confirmation)."""

    async def collect_now(self) -> tuple[MeterRecord, ...]:
        """Values for a ``query`` reply."""

    async def period_changed(self, minutes: int) -> None:
        """The data centre set the report period."""


class State(enum.Enum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    ONLINE = "online"
    REFUSED = "refused"
    DOWN = "down"


@dataclass(slots=True)
class Status:
    """What health shows of the uplink."""

    state: State = State.DOWN
    last_error: str = ""
    clock_offset: timedelta | None = None  #: data centre time - our time, at the last ``time``
    crc_form: str = ""  #: the CRC form of the data centre's frames, as last seen
    sent: int = 0
    acked: int = 0


class Session:
    """A client over one open stream pair."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: Settings,
        status: Status | None = None,
    ) -> None:
        self.reader, self.writer, self.settings = reader, writer, settings
        self.status = status or Status()
        self._decoder = FrameDecoder(settings.variant)
        self._replies: asyncio.Queue[Message | SessionError] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._seq = 0
        self._tried: set[int] = set()
        self._source: ReportSource | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_problem = ""
        self.logged_in = False

    # --- wire ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        s = self.settings
        text = build(message, s.common, s.variant)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq if s.variant.frame_seq == "counter" else 0
        frame = encode_frame(encrypt(text, s.aes_key, s.variant), seq, s.variant)
        async with self._write_lock:
            self.writer.write(frame)
            await self.writer.drain()
        log.debug("sent %s", text.decode("utf-8", "replace"))

    def _packet(self, frame: Frame) -> Packet | None:
        self.status.crc_form = str(frame.crc_form)
        try:
            return parse(decrypt(frame.payload, self.settings.aes_key, self.settings.variant), self.settings.variant)
        except (CryptoError, MessageError) as exc:
            self._last_problem = f"a frame from the data centre did not decode: {exc} (AES key or mode?)"
            log.warning("%s", self._last_problem)
            return None

    async def _read_loop(self) -> None:
        s = self.settings
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(self.reader.read(65536), s.idle_timeout)
                except TimeoutError:
                    raise SessionError(f"nothing received for {s.idle_timeout:g} s") from None
                if not chunk:
                    raise SessionError("the data centre closed the connection")
                for event in self._decoder.feed(chunk):
                    if not isinstance(event, Frame):
                        self._last_problem = f"dropped {event.count} bytes: {event.reason}"
                        log.warning("data centre stream: %s (%s…)", self._last_problem, event.sample.hex())
                        continue
                    packet = self._packet(event)
                    if packet is not None:
                        self._dispatch(packet.message)
        except (SessionError, OSError) as exc:
            err = exc if isinstance(exc, SessionError) else SessionError(f"connection error: {exc}")
            self._replies.put_nowait(err)

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, ServerTime):
            self.status.clock_offset = message.time - datetime.now()
        if isinstance(message, Query | PeriodConfig):
            task = asyncio.create_task(self._serve(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._replies.put_nowait(message)

    async def _serve(self, message: Query | PeriodConfig) -> None:
        source = self._source
        try:
            if isinstance(message, PeriodConfig):
                await self.send(PeriodAck())
                if source is not None:
                    await source.period_changed(message.minutes)
            elif source is not None:
                meters = await source.collect_now()
                now = datetime.now().replace(microsecond=0)
                await self.send(Report("reply", now.strftime("%Y%m%d%H%M%S"), now, meters))
        except Exception:
            log.exception("answering %s failed", type(message).__name__)

    async def _expect(self, *kinds: type[Message], what: str) -> Message:
        """The next reply of one of ``kinds``; others are logged and dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reply_timeout
        while True:
            left = deadline - loop.time()
            try:
                got = await asyncio.wait_for(self._replies.get(), max(left, 0))
            except TimeoutError:
                extra = f"; {self._last_problem}" if self._last_problem else ""
                raise ReplyTimeout(f"no {what} within {self.settings.reply_timeout:g} s{extra}") from None
            if isinstance(got, SessionError):
                self._replies.put_nowait(got)  # every later wait sees it too
                raise got
            if isinstance(got, kinds):
                return got
            log.info("data centre sent %s while we waited for %s; ignored", type(got).__name__, what)

    # --- protocol -----------------------------------------------------------------------------

    def start(self) -> None:
        task = asyncio.create_task(self._read_loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def login(self) -> None:
        s = self.settings
        self.status.state = State.AUTHENTICATING
        await self.send(LoginRequest())
        try:
            challenge = await self._expect(LoginChallenge, LoginResult, what="login sequence")
        except ReplyTimeout as exc:
            v = s.variant
            raise ReplyTimeout(
                f"{exc} (a data centre that cannot decrypt our request stays silent: check the AES key, "
                f"aes_mode ({v.aes_mode}), padding ({v.padding}) and the frame's crc_span/crc_order)"
            ) from None
        if isinstance(challenge, LoginChallenge):
            await self.send(LoginDigest(login_digest(challenge.sequence, s.login_key, s.variant)))
            result = await self._expect(LoginResult, what="login result")
        else:
            result = challenge  # D's platform answers a request with the result directly
        assert isinstance(result, LoginResult)
        if not result.passed:
            self.status.state = State.REFUSED
            v = s.variant
            raise LoginRefused(
                f"the data centre refused the login (result {result.text!r}); check the key, "
                f"md5_order ({v.md5_order}), md5_case ({v.md5_case}) and the building/gateway ids"
            )
        if result.time is not None:
            self.status.clock_offset = result.time - datetime.now()
        self.status.state = State.ONLINE
        self.logged_in = True
        log.info("data centre login passed")

    async def heartbeat(self) -> None:
        await self.send(Heartbeat())
        await self._expect(ServerTime, what="heartbeat time")

    async def deliver(self, item: Pending, *, total: int | None = None, current: int | None = None) -> bool:
        """Send one period; True once acknowledged (or sent, when the variant expects no report ack)."""
        continuous = total is not None
        report = Report(
            "continuous" if continuous else "report",
            str(item.key),
            item.time,
            item.meters,
            total=total,
            current=current,
        )
        self._tried.add(item.key)
        await self.send(report)
        self.status.sent += 1
        if not continuous and self.settings.variant.report_ack == "none":
            return True
        try:
            while True:
                ack = await self._expect(Ack, what=f"ack of {report.operation} {item.key}")
                assert isinstance(ack, Ack)
                if ack.sequence in (None, report.sequence):
                    break
                log.info("ack for sequence %s while %s is in flight; ignored", ack.sequence, report.sequence)
        except ReplyTimeout as exc:
            log.warning("%s: it stays pending and is resent as continuous", exc)
            return False
        if not ack.passed:
            log.warning("data centre refused %s %s (%s)", report.operation, item.key, ack.form)
            return False
        self.status.acked += 1
        return True

    async def pump(self, source: ReportSource) -> int:
        """Deliver what is pending: new periods as ``report``, the rest as one ``continuous`` round."""
        done = 0
        items = list(await source.pending(self.settings.batch))
        fresh = [i for i in items if not i.resend and i.key not in self._tried]
        old = [i for i in items if i.resend or i.key in self._tried]
        for item in fresh:
            if await self.deliver(item):
                await source.acknowledged(item)
                done += 1
        for n, item in enumerate(old, 1):
            if not await self.deliver(item, total=len(old), current=n):
                break  # the data centre does not ack: try again next round
            await source.acknowledged(item)
            done += 1
        return done

    async def run(self, source: ReportSource, wake: asyncio.Event) -> None:
        """Login, then heartbeats and deliveries until the connection fails (raises SessionError)."""
        self._source = source
        self.start()
        try:
            await self.login()
            loop = asyncio.get_running_loop()
            next_beat = loop.time()
            while True:
                if loop.time() >= next_beat:
                    await self.heartbeat()
                    next_beat = loop.time() + self.settings.heartbeat
                wake.clear()  # before the pump: a period that closes while it runs is not missed
                if await self.pump(source) >= self.settings.batch:
                    continue  # a full round: more may be waiting (a backlog), go on at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(next_beat - loop.time(), 0))
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Backoff:
    """Jittered exponential delays: base·2ⁿ capped, each × 0.5…1.5."""

    def __init__(self, base: float = 2.0, cap: float = 300.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * random.uniform(0.5, 1.5)

    def reset(self) -> None:
        self.failures = 0


async def run_forever(
    host: str,
    port: int,
    settings: Settings,
    source: ReportSource,
    wake: asyncio.Event,
    status: Status,
    backoff: Backoff | None = None,
) -> None:
    """One connection at a time, reconnecting with backoff; returns only when cancelled.

    Each failure is logged once while it stays the same (a WARNING when it changes, and after a
    session that had logged in); repeats are DEBUG, so a data centre that is away for a day or keeps
    refusing us does not fill the journal."""
    backoff = backoff or Backoff()
    logged = ""
    while True:
        status.state = State.CONNECTING
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), settings.reply_timeout)
        except (OSError, TimeoutError) as exc:
            status.state, status.last_error = State.DOWN, f"connect to {host}:{port} failed: {exc or 'timed out'}"
        else:
            session = Session(reader, writer, settings, status)
            try:
                await session.run(source, wake)
            except LoginRefused as exc:
                status.state, status.last_error = State.REFUSED, str(exc)
            except SessionError as exc:
                if session.logged_in:
                    backoff.reset()  # it worked for a while: start the delays again from the base
                    logged = ""
                status.state, status.last_error = State.DOWN, str(exc)
        delay = backoff.next()
        level = logging.WARNING if status.last_error != logged else logging.DEBUG
        log.log(level, "data centre uplink: %s; next attempt in %.0f s", status.last_error, delay)
        logged = status.last_error
        await asyncio.sleep(delay)
