"""Modbus client transport: TCP, RTU on a serial port, RTU over TCP. The only pymodbus import.

What pymodbus does not do for us, and this module does (measured in docs/reference/libraries.md):

* One transaction on a bus at a time (a lock), with the configured pause between requests and
  at least 3.5 character times of silence before each frame on a serial line.
* Retries are ours, not pymodbus's: pymodbus resends at once after a timeout, so a late reply to
  the first attempt is taken as the answer to the second (RTU has no transaction id). After a
  timeout on a serial line we wait the line out (``drain``) before anything else is sent.
* The reply must carry the function code and the register count asked for: pymodbus matches a
  reply by transaction id (TCP) or unit id (RTU) only, so an FC04 answer to an FC03 request would
  otherwise be taken as holding registers.
* Bytes that pymodbus cannot frame (garbage, an MBAP header with a wrong length, RTU frames on a
  Modbus TCP link) make pymodbus's protocol callback raise inside asyncio, which logs a traceback and
  drops the link. We catch that in the client's ``data_received`` and report the request as
  ``Garbled``, naming what was wrong with the bytes; a TCP link is reopened after it.
* Why a port or connection cannot be opened: pymodbus swallows the OSError and returns False; the
  connection factory is wrapped to keep the reason (``cannot open /dev/ttyUSB0 9600 8N1: No such
  file or directory``).
* Connection management: pymodbus's own background reconnect is off; the link is (re)opened on
  demand, so a USB adapter that vanishes and returns is reopened without a restart, and the bus
  worker decides about backoff.
* Modbus TCP without pymodbus's transaction manager (``_TcpChannel``): its client path costs
  about 140 µs of CPU per request here (an asyncio.Lock, ``wait_for``, a PDU object, one
  ``struct.unpack`` call per register, a log line's ``__str__``), a bare asyncio client 80 µs. The
  channel sends a request frame pymodbus's framer built once per (unit, function, address, count)
  with the transaction id in front, waits on one future with one timer, and hands back the
  reply's register bytes for the codec to unpack in one go (bench/bench_request.py). A reply that
  is not the one expected goes through pymodbus's own PDU decoder. RTU (serial, or over TCP) stays
  on pymodbus's client: the line, not the CPU, is the limit there.
* Frame traces (drivers/trace.py, ``--trace``): the request as pymodbus writes it (its public
  ``trace_packet`` hook: the whole ADU, MBAP header or CRC included) and, when the transaction ends,
  every byte heard during it (from the ``data_received`` hook, which sees each chunk once; pymodbus's
  own hook is handed its growing buffer again with each chunk, and not at all on a timeout).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from drivers import trace
from drivers.errors import (
    MODBUS_EXCEPTIONS,
    BadReply,
    ExceptionReply,
    Garbled,
    NoReply,
    NotConnected,
    TransportError,
    cannot_open,
)
from drivers.modbus.codec import words
from drivers.modbus.rtu import crc16
from drivers.model import Function
from drivers.serialport import SerialSettings

log = logging.getLogger(__name__)

# pymodbus logs every timeout at ERROR ("No response received after 0 retries ..."): that is our
# NoReply, reported once per meter by the caller. Keep its own logger quiet below CRITICAL.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class Link:
    """How to reach a bus. ``kind``: tcp | rtu | rtu-over-tcp; an rtu link, and only that, has ``serial``."""

    kind: str
    host: str = ""
    port: int = 502
    serial: SerialSettings | None = None  #: the serial port of an rtu link, e.g. /dev/ttyUSB0 9600 8N1
    timeout: float = 0.5  #: seconds per attempt
    retries: int = 1  #: further attempts after a timeout
    pause: float = 0.0  #: silence between the end of one transaction and the next request
    drain: float | None = None  #: wait after a timeout on a serial line; default: the timeout
    name: str = ""  #: the bus's name in the config, for frame traces

    def __post_init__(self) -> None:
        if (self.kind == "rtu") != (self.serial is not None):
            raise ValueError(f"serial settings are for an rtu link, which needs them (this link: {self.kind})")

    @property
    def serial_line(self) -> bool:
        """RTU framing: no transaction id, so stale replies are possible."""
        return self.kind in ("rtu", "rtu-over-tcp")

    @property
    def silence(self) -> float:
        """Inter-frame silence t3.5 (fixed at 1.75 ms above 19200 baud, per the Modbus spec)."""
        if self.serial is None:
            return 0.0
        return 0.00175 if self.serial.baudrate > 19200 else 3.5 * self.serial.char_time

    def describe(self) -> str:
        if self.serial is not None:
            return self.serial.describe()
        return f"{self.kind}://{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """The bus in a frame trace: its name, else its port or host:port."""
        if self.name:
            return self.name
        return self.serial.device if self.serial is not None else f"{self.host}:{self.port}"


_MBAP = struct.Struct(">HHHB")  #: transaction id, protocol id, length, unit id


class _Lost(Exception):
    """The TCP connection closed while a request waited for its reply."""


@dataclass(slots=True)
class _Chain:
    """A plan being read by _TcpChannel.chain."""

    frames: list[bytes]  #: the request frames without their transaction ids
    expect: list[tuple[int, int]]  #: per frame: the function code and byte count of its plain reply
    results: list[Any]  #: the register bytes of the replies in so far
    timeout: float
    deadline: float  #: loop time by which the reply to the request out now must be in
    timer: asyncio.TimerHandle | None = None  #: fires at a deadline (the first; re-armed when it finds it moved)


class _TcpChannel(asyncio.Protocol):
    """One Modbus TCP connection, one request at a time (the transport's lock sees to that).

    ``data_received`` takes the reply to the request waiting (its transaction id and unit) and
    passes over any other complete frame (a late reply to an earlier request); bytes that make no
    frame stay unanswered until the request times out, and the transport then says what they are.
    """

    def __init__(self, owner: ModbusTransport) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.tid = 0
        self.unit = 0
        self.waiter: asyncio.Future[Any] | None = None
        self.chained: _Chain | None = None  #: the plan being read by :meth:`chain`
        self.sent = 0  #: request frames written by chains

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(_Lost(str(exc) if exc else "closed by the peer"))

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner.bytes_in += len(data)
        owner._heard += data
        if trace.ON:
            owner._heard_at = time.monotonic()
        waiter = self.waiter
        buf = self.buf
        if waiter is None or waiter.done():
            buf.clear()  # nobody asked: a late reply or noise (the trace shows it as stray)
            return
        buf += data
        while len(buf) >= 8:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if pid != 0 or length < 2 or length > 254:
                return  # no Modbus TCP frame: the request times out and the bytes are described
            end = 6 + length
            if len(buf) < end:
                return
            if tid == self.tid and unit == self.unit:
                pdu = bytes(buf[7:end])
                del buf[:end]
                if self.chained is not None:
                    self._chained_reply(self.chained, waiter, pdu)
                return
            del buf[:end]

    def chain(
        self,
        frames: list[bytes],
        expect: list[tuple[int, int]],
        unit: int,
        tid: int,
        timeout: float,
        results: list[bytes | TransportError],
    ) -> asyncio.Future[Any]:
        """Send ``frames`` (without their transaction ids) one after the other, each as soon as the
        plain reply to the one before is in ``results``. The future ends with None when all are in,
        else with the reply that was not plain (its PDU), TimeoutError() or a _Lost."""
        loop = asyncio.get_running_loop()
        self.chained = _Chain(frames, expect, results, timeout, loop.time() + timeout)
        self.tid = tid
        self.unit = unit
        waiter = self.waiter = loop.create_future()
        self._send_next(self.chained)
        self.chained.timer = loop.call_at(self.chained.deadline, self._check_deadline, waiter)
        return waiter

    def _send_next(self, ch: _Chain) -> None:
        assert self.transport is not None
        self.tid = self.tid % 0xFFFF + 1
        frame = self.tid.to_bytes(2, "big") + ch.frames[len(ch.results)]
        self.owner.bytes_out += len(frame)
        self.owner._heard.clear()
        if trace.ON:
            self.owner.tracer.sent(frame)
        self.buf.clear()
        self.sent += 1
        self.transport.write(frame)

    def _check_deadline(self, waiter: asyncio.Future[Any]) -> None:
        ch = self.chained
        if waiter.done() or ch is None or self.waiter is not waiter:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= ch.deadline:
            waiter.set_result(TimeoutError())
        else:  # the chain moved on: this is the deadline of a later request
            ch.timer = loop.call_at(ch.deadline, self._check_deadline, waiter)

    def _chained_reply(self, ch: _Chain, waiter: asyncio.Future[Any], pdu: bytes) -> None:
        results = ch.results
        fc, size = ch.expect[len(results)]
        if len(pdu) != 2 + size or pdu[0] != fc or pdu[1] != size:
            waiter.set_result(pdu)
            return
        results.append(pdu[2:])
        if len(results) == len(ch.frames):
            waiter.set_result(None)
            return
        if trace.ON:  # the reply of a request in the middle of the chain (the last one: _chain's)
            owner = self.owner
            owner.tracer.heard(bytes(owner._heard), last=owner._heard_at)
        ch.deadline = asyncio.get_running_loop().time() + ch.timeout
        self._send_next(ch)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class ModbusTransport:
    """A Modbus master on one physical bus."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._quiet_until = 0.0  # monotonic time before which nothing may be sent
        self.requests = 0
        self.timeouts = 0  #: attempts without a usable reply (garbled ones included)
        self.garbled = 0  #: attempts answered with bytes no reply could be read from
        self.bytes_out = 0
        self.bytes_in = 0
        self._sent = b""  # the request frame of the running transaction
        self._heard = bytearray()  # every byte received during it
        self._heard_at = 0.0  # when the last of them came (kept only while tracing)
        self._hooked = False  # is data_received ours (see _hook)?
        self._connect_error: BaseException | None = None
        self.tracer = trace.Tracer(link.label)
        self._channel: _TcpChannel | None = None  # Modbus TCP: our own channel, not pymodbus's client
        self._frames: dict[tuple[int, int, int, int], bytes] = {}  # request frames without the tid
        self._tid = 0
        self._decoder = DecodePDU(False)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's ``trace_packet`` hook: every frame it sends (and its receive buffer)."""
        if sending:
            self.bytes_out += len(data)
            self._sent = data
            if trace.ON:
                self.tracer.sent(data)
        elif not self._hooked:  # no data_received hook: pymodbus's buffer is the best we have
            self._heard[:] = data
            self._heard_at = time.monotonic()
        return data

    def _make_client(self) -> Any:
        link = self.link
        common: dict[str, Any] = {
            "timeout": link.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace,
        }
        client: Any
        if link.serial is not None:
            serial = link.serial
            client = AsyncModbusSerialClient(serial.device, framer=FramerType.RTU, **serial.pyserial(), **common)
        else:
            framer = FramerType.RTU if link.kind == "rtu-over-tcp" else FramerType.SOCKET
            client = AsyncModbusTcpClient(link.host, port=link.port, framer=framer, **common)
        self._hook(client)
        return client

    def _hook(self, client: Any) -> None:
        """Two hooks into pymodbus 3.16's client protocol (``client.ctx``, the TransactionManager that
        asyncio calls directly). Without them (an upgrade that moves them) the transport still works but
        loses the reasons and lets undecodable bytes raise inside asyncio again, which
        tests/integration/test_wire_faults.py shows."""
        ctx: Any = getattr(client, "ctx", None)
        if not (hasattr(ctx, "call_create") and hasattr(ctx, "data_received")):
            log.warning("pymodbus %s: no client.ctx hooks; reasons for connection failures are lost", client)
            return
        create = ctx.call_create  # the connection factory: OSError from it becomes "return False"

        async def create_noting_why(*args: Any, **kwargs: Any) -> Any:
            try:
                return await create(*args, **kwargs)
            except Exception as exc:
                self._connect_error = exc
                raise

        ctx.call_create = create_noting_why
        received = ctx.data_received

        def data_received(data: bytes) -> None:
            self.bytes_in += len(data)
            self._heard += data
            if trace.ON:
                self._heard_at = time.monotonic()
            try:
                received(data)
            except Exception as exc:  # a frame pymodbus cannot decode: the request ends as Garbled
                log.debug("%s: undecodable bytes %s: %s", self.link.describe(), data.hex(), exc)

        ctx.data_received = data_received
        self._hooked = True

    async def connect(self) -> None:
        if self.link.kind == "tcp":
            await self._connect_tcp()
            return
        if self._client is not None and self._client.connected:
            return
        if self._client is not None:
            self._client.close()
        self._client = self._make_client()
        # A dead meter must not make pymodbus drop a link that other meters share.
        self._client.set_max_no_responses(1_000_000)
        self._connect_error = None
        try:
            ok = await self._client.connect()
        except Exception as exc:  # termios.error (a pty refusing parity) is no OSError: it gets through
            ok = False
            self._connect_error = exc
        if not ok:
            self._client.close()
            self._client = None
            why = self._connect_error
            if why is None and self.link.kind != "rtu":
                why = TimeoutError(f"no connection within {self.link.timeout * 1000:g} ms")
            raise cannot_open(self.link.describe(), why, parity=self.link.serial.parity if self.link.serial else "N")

    async def _connect_tcp(self) -> None:
        if self._channel is not None and self._channel.connected:
            return
        self.close()
        loop = asyncio.get_running_loop()
        channel = _TcpChannel(self)
        link = self.link
        try:
            await asyncio.wait_for(loop.create_connection(lambda: channel, link.host, link.port), link.timeout)
        except TimeoutError:
            why: BaseException = TimeoutError(f"no connection within {link.timeout * 1000:g} ms")
            raise cannot_open(link.describe(), why) from None
        except OSError as exc:
            raise cannot_open(link.describe(), exc) from None
        self._channel = channel

    @property
    def connected(self) -> bool:
        if self._channel is not None:
            return self._channel.connected
        return self._client is not None and bool(self._client.connected)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if trace.ON:
            self.tracer.flush()

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        """Read ``count`` registers; raises NoReply, ExceptionReply, BadReply or NotConnected.

        ``retries`` overrides the link's (0 for a meter already known to be down: one timeout).
        """
        return words(await self.read_data(unit, function, address, count, retries=retries))

    async def read_data(
        self,
        unit: int,
        function: Function,
        address: int,
        count: int,
        *,
        retries: int | None = None,
        tried: TransportError | None = None,
    ) -> bytes:
        """:meth:`read`, the registers as the reply's 2 × ``count`` bytes (big-endian words).

        ``tried``: how a first attempt made by :meth:`read_plan` ended; it counts as attempt 1."""
        async with self._lock:
            attempts = (self.link.retries if retries is None else retries) + 1
            for attempt in range(attempts):
                try:
                    if tried is not None:
                        outcome, tried = tried, None
                        raise outcome
                    await self.connect()
                    await self._wait_quiet()
                    if self._channel is None:
                        self.requests += 1  # a chain counts what it sends itself
                        return await self._once(unit, function, address, count)
                    one: list[bytes | TransportError] = []
                    failed = await self._chain(unit, [(function, address, count)], one)
                    if failed is not None:
                        raise failed
                    return one[0]  # type: ignore[return-value]  # a reply's bytes (an error is raised)
                except NoReply as exc:
                    self.timeouts += 1
                    if isinstance(exc, Garbled):
                        self.garbled += 1
                        if not self.link.serial_line:
                            self.close()  # the MBAP stream is out of step: start the next request afresh
                    self._drain()
                    if attempt + 1 == attempts:
                        raise
                except BadReply:
                    self._drain()  # on a serial line the real reply may still be on its way
                    raise
                finally:
                    self._quiet_until = max(self._quiet_until, time.monotonic() + self.link.pause + self.link.silence)
            raise AssertionError("unreachable")

    async def read_plan(
        self, unit: int, reads: list[tuple[Function, int, int]], *, retries: int | None = None
    ) -> list[bytes | TransportError]:
        """Several reads of one unit in order: each one's register bytes, or the error it ended with.
        A NoReply or NotConnected ends the list (the unit or the link is gone: one timeout, not one
        per read).

        On Modbus TCP (no pause configured, no trace) the next request goes out from the reply
        handler of the one before, with one future and one timer for the whole plan: a request costs
        its two syscalls and the reply's parsing, not a task wake-up each (bench/bench_request.py).
        The first reply that is not the plain answer, a timeout, or a lost link ends the chain, and
        that read goes on as one whose first attempt ended so."""
        results: list[bytes | TransportError] = []
        tried: TransportError | None = None
        if self.link.kind == "tcp" and not self.link.pause and reads:
            async with self._lock:
                try:
                    await self.connect()
                except TransportError as exc:
                    return [exc]
                tried = await self._chain(unit, reads, results)
        for i in range(len(results), len(reads)):
            function, address, count = reads[i]
            try:
                results.append(await self.read_data(unit, function, address, count, retries=retries, tried=tried))
            except TransportError as exc:
                results.append(exc)
                if isinstance(exc, (NoReply, NotConnected)):
                    break
            tried = None
        return results

    async def _chain(
        self, unit: int, reads: list[tuple[Function, int, int]], results: list[bytes | TransportError]
    ) -> TransportError | None:
        """Fill ``results`` with the plain replies of a chain; how the read after them ended, if it did."""
        channel = self._channel
        assert channel is not None
        frames = [self._frame(unit, function, address, count) for function, address, count in reads]
        expect = [(function.code, 2 * count) for function, _, count in reads]
        if trace.ON and self._heard:  # bytes since the last transaction ended: a late reply, noise
            self.tracer.stray(bytes(self._heard))
        self._heard.clear()
        sent_before = channel.sent
        waiter = channel.chain(frames, expect, unit, self._tid, self.link.timeout, results)
        end: Any = "interrupted"  # for the trace, if the wait is cancelled
        try:
            end = await waiter
        finally:
            self.requests += channel.sent - sent_before
            self._tid = channel.tid
            if channel.chained is not None and channel.chained.timer is not None:
                channel.chained.timer.cancel()
            channel.waiter = None
            channel.chained = None
            # what came since the request out last was sent (a plain chain's end needs it only for a trace)
            heard = bytes(self._heard) if end is not None or trace.ON else b""
            self._heard.clear()
            if trace.ON:  # how that transaction ended
                outcome = {TimeoutError: "timeout", _Lost: "lost", str: end}.get(type(end), "")
                self.tracer.heard(heard, last=self._heard_at, outcome=outcome)
        if end is None:
            return None
        i = len(results)
        function, address, count = reads[i]
        try:
            if isinstance(end, bytes):  # a reply, but not the plain one: an exception, another function ...
                results.append(self._odd_reply(end, heard, unit, function, address, count))
                return None
        except TransportError as exc:
            return exc
        if isinstance(end, _Lost):
            self.close()
            return NotConnected(f"lost {self.link.describe()}")
        return self._unanswered(heard, unit, channel.tid.to_bytes(2, "big") + frames[i])

    def _drain(self) -> None:
        if self.link.serial_line:
            drain = self.link.timeout if self.link.drain is None else self.link.drain
            self._quiet_until = max(self._quiet_until, time.monotonic() + drain)

    async def _wait_quiet(self) -> None:
        delay = self._quiet_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _frame(self, unit: int, function: Function, address: int, count: int) -> bytes:
        """The request frame after its transaction id, built by pymodbus's framer once."""
        key = (unit, function.code, address, count)
        frame = self._frames.get(key)
        if frame is None:
            cls = ReadHoldingRegistersRequest if function is Function.HOLDING else ReadInputRegistersRequest
            pdu = cls(address=address, count=count, dev_id=unit)
            frame = self._frames[key] = FramerSocket(self._decoder).buildFrame(pdu)[2:]
        return frame

    def _unanswered(self, heard: bytes, unit: int, sent: bytes) -> NoReply:
        """A request's timeout: Garbled, naming what the bytes heard are, or NoReply when none came."""
        if heard:
            why = describe_garbage(self.link.kind, heard, unit, sent)
            return Garbled(f"unit {unit}: unreadable reply ({why}): {preview(heard)}")
        return NoReply(f"no reply from unit {unit} in {self.link.timeout * 1000:g} ms")

    def _odd_reply(self, pdu: bytes, heard: bytes, unit: int, function: Function, address: int, count: int) -> bytes:
        """Any reply but the plain one asked for, through pymodbus's decoder: an exception, another
        function's answer, a wrong register count, or a PDU no Modbus function makes."""
        try:
            rr = self._decoder.decode(pdu)
        except ModbusException:
            rr = None
        if rr is None:
            why = describe_garbage(self.link.kind, heard, unit, heard[:2])
            raise Garbled(f"unit {unit}: unreadable reply ({why}): {preview(heard)}")
        return _bytes(self._check(rr, unit, function, address, count))

    async def _once(self, unit: int, function: Function, address: int, count: int) -> bytes:
        call = (
            self._client.read_holding_registers if function is Function.HOLDING else self._client.read_input_registers
        )
        if trace.ON and self._heard:  # bytes since the last transaction ended: a late reply, noise
            self.tracer.stray(bytes(self._heard))
        self._sent = b""
        self._heard.clear()
        outcome = "interrupted"  # for the trace: how the transaction ended (cancelled, unless said)
        started = time.monotonic()
        try:
            rr = await call(address, count=count, device_id=unit)
            outcome = ""
        except ModbusIOException:
            # pymodbus timed out, or refused a reply at once (another unit or transaction id)
            outcome = "timeout" if time.monotonic() - started >= 0.9 * self.link.timeout else "refused"
            heard = bytes(self._heard)
            if self.link.serial_line and self._sent and heard.startswith(self._sent):
                heard = heard[len(self._sent) :]  # an adapter echoing our own request
            raise self._unanswered(heard, unit, self._sent) from None
        except ConnectionException:
            outcome = "lost"
            self.close()
            raise NotConnected(f"lost {self.link.describe()}") from None
        except ModbusException as exc:
            outcome = "garbled"
            raise BadReply(f"unit {unit}: {exc}") from None
        finally:
            if trace.ON:
                if self._sent:  # pymodbus sent the request (not so when the link was already down)
                    self.tracer.heard(bytes(self._heard), last=self._heard_at, outcome=outcome)
                self._heard.clear()
        return _bytes(self._check(rr, unit, function, address, count))

    @staticmethod
    def _check(rr: Any, unit: int, function: Function, address: int, count: int) -> list[int]:
        """The registers of a reply pymodbus decoded, if it is the answer to the request made."""
        replied = rr.function_code & 0x7F  # an exception reply carries the function code + 0x80
        if replied != function.code:
            raise BadReply(f"unit {unit}: asked FC{function.code:02d}, reply is FC{replied:02d}")
        if isinstance(rr, ExceptionResponse) or rr.isError():
            code = getattr(rr, "exception_code", 0)
            text = MODBUS_EXCEPTIONS.get(code, "unknown exception")
            if code in (10, 11):  # a gateway saying the meter behind it is silent: no reply
                raise NoReply(f"unit {unit}: gateway exception {code}, {text}")
            raise ExceptionReply(code, f"unit {unit} FC{function.code:02d} {address}+{count}: exception {code}, {text}")
        registers = list(rr.registers)
        if len(registers) != count:
            raise BadReply(f"unit {unit}: asked {count} registers at {address}, reply has {len(registers)}")
        return registers


def _bytes(registers: list[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


def preview(data: bytes, limit: int = 16) -> str:
    """``03 04 00 0A ...`` (the first bytes, for a message)."""
    text = " ".join(f"{b:02X}" for b in data[:limit])
    return f"{text} ... ({len(data)} bytes)" if len(data) > limit else text


def describe_garbage(kind: str, data: bytes, unit: int, sent: bytes = b"") -> str:
    """What is wrong with bytes from which no reply to ``unit`` could be read (``sent``: our request)."""
    looks_rtu = len(data) >= 4 and any(crc16(data[: n - 2]) == data[n - 2 : n] for n in range(4, len(data) + 1))
    if kind != "tcp":
        if looks_rtu and data[0] != unit:
            return f"a frame from unit {data[0]}, asked unit {unit}"
        if looks_rtu:
            return "a frame the client cannot decode"
        return "no valid RTU frame: noise, or a wrong baud rate or parity?"
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than a Modbus TCP header"
    pid, length, got = int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:6], "big"), data[6]
    if pid != 0:
        hint = "; an RTU frame: a serial server wanting type rtu-over-tcp?" if looks_rtu and data[0] == unit else ""
        return f"protocol id 0x{pid:04X}, not 0: not Modbus TCP{hint}"
    if length < 2 or length + 6 != len(data):
        return f"MBAP length {length}, but {len(data) - 6} bytes follow it"
    if got != unit:
        return f"from unit {got}, asked unit {unit}"
    if len(sent) >= 2 and data[:2] != sent[:2]:
        tid, asked = int.from_bytes(data[:2], "big"), int.from_bytes(sent[:2], "big")
        return f"transaction id {tid}, asked {asked}"
    return f"function code {data[7]} with {length - 2} data bytes cannot be decoded"
