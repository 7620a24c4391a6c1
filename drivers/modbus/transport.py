"""Modbus client transport: TCP, RTU on a serial port, RTU over TCP. The only pymodbus import.

What pymodbus does not do for us, and this module does (measured in ../shared/LIBRARIES.md):

* One transaction on a bus at a time (a lock), with the configured pause between requests and
  at least 3.5 character times of silence before each frame on a serial line.
* Retries are ours, not pymodbus's: pymodbus resends at once after a timeout, so a late reply to
  the first attempt is taken as the answer to the second (RTU has no transaction id). After a
  timeout on a serial line we wait the line out (``drain``) before anything else is sent.
* The reply must carry the register count asked for.
* Connection management: pymodbus's own background reconnect is off; the link is (re)opened on
  demand, so a USB adapter that vanishes and returns is reopened without a restart, and the bus
  worker decides about backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.errors import MODBUS_EXCEPTIONS, BadReply, ExceptionReply, NoReply, NotConnected
from drivers.model import Function

log = logging.getLogger(__name__)

# pymodbus logs every timeout at ERROR ("No response received after 0 retries ..."): that is our
# NoReply, reported once per meter by the caller. Keep its own logger quiet below CRITICAL.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

PARITIES = {"N": "N", "E": "E", "O": "O"}


@dataclass(frozen=True, slots=True)
class Link:
    """How to reach a bus. ``kind``: tcp | rtu | rtu-over-tcp."""

    kind: str
    host: str = ""
    port: int = 502
    device: str = ""  #: serial device for rtu, e.g. /dev/ttyUSB0
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout: float = 0.5  #: seconds per attempt
    retries: int = 1  #: further attempts after a timeout
    pause: float = 0.0  #: silence between the end of one transaction and the next request
    drain: float | None = None  #: wait after a timeout on a serial line; default: the timeout

    @property
    def serial_line(self) -> bool:
        """RTU framing: no transaction id, so stale replies are possible."""
        return self.kind in ("rtu", "rtu-over-tcp")

    @property
    def char_time(self) -> float:
        """Seconds on the wire for one character (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def silence(self) -> float:
        """Inter-frame silence t3.5 (fixed at 1.75 ms above 19200 baud, per the Modbus spec)."""
        if self.kind != "rtu":
            return 0.0
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time

    def describe(self) -> str:
        if self.kind == "rtu":
            return f"{self.device} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return f"{self.kind}://{self.host}:{self.port}"


def serial_options(link: Link) -> dict[str, Any]:
    """pyserial options for a link; parity handling lives here alone (ptys refuse parity)."""
    if link.parity not in PARITIES:
        raise ValueError(f"parity {link.parity!r} is not N, E or O")
    return {
        "baudrate": link.baudrate,
        "bytesize": link.bytesize,
        "parity": PARITIES[link.parity],
        "stopbits": link.stopbits,
    }


class ModbusTransport:
    """A Modbus master on one physical bus."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._quiet_until = 0.0  # monotonic time before which nothing may be sent
        self.requests = 0
        self.timeouts = 0
        self.bytes_out = 0
        self.bytes_in = 0

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.bytes_out += len(data)
        else:
            self.bytes_in += len(data)
        return data

    def _make_client(self) -> Any:
        link = self.link
        common: dict[str, Any] = {
            "timeout": link.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace,
        }
        if link.kind == "rtu":
            return AsyncModbusSerialClient(link.device, framer=FramerType.RTU, **serial_options(link), **common)
        framer = FramerType.RTU if link.kind == "rtu-over-tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(link.host, port=link.port, framer=framer, **common)

    async def connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        if self._client is not None:
            self._client.close()
        self._client = self._make_client()
        # A dead meter must not make pymodbus drop a link that other meters share.
        self._client.set_max_no_responses(1_000_000)
        try:
            ok = await self._client.connect()
        except Exception as exc:  # pyserial raises SerialException subclasses of OSError, or ValueError
            ok = False
            log.debug("connect %s: %s", self.link.describe(), exc)
        if not ok:
            self._client.close()
            self._client = None
            raise NotConnected(f"cannot open {self.link.describe()}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        """Read ``count`` registers; raises NoReply, ExceptionReply, BadReply or NotConnected.

        ``retries`` overrides the link's (0 for a meter already known to be down: one timeout).
        """
        async with self._lock:
            attempts = (self.link.retries if retries is None else retries) + 1
            for attempt in range(attempts):
                await self.connect()
                await self._wait_quiet()
                self.requests += 1
                try:
                    return await self._once(unit, function, address, count)
                except NoReply:
                    self.timeouts += 1
                    if self.link.serial_line:
                        drain = self.link.timeout if self.link.drain is None else self.link.drain
                        self._quiet_until = max(self._quiet_until, time.monotonic() + drain)
                    if attempt + 1 == attempts:
                        raise
                finally:
                    self._quiet_until = max(self._quiet_until, time.monotonic() + self.link.pause + self.link.silence)
            raise AssertionError("unreachable")

    async def _wait_quiet(self) -> None:
        delay = self._quiet_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _once(self, unit: int, function: Function, address: int, count: int) -> list[int]:
        call = (
            self._client.read_holding_registers if function is Function.HOLDING else self._client.read_input_registers
        )
        try:
            rr = await call(address, count=count, device_id=unit)
        except ModbusIOException:
            raise NoReply(f"no reply from unit {unit} in {self.link.timeout * 1000:g} ms") from None
        except ConnectionException:
            self.close()
            raise NotConnected(f"lost {self.link.describe()}") from None
        except ModbusException as exc:
            raise BadReply(f"unit {unit}: {exc}") from None
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            text = MODBUS_EXCEPTIONS.get(code, "unknown exception")
            if code in (10, 11):  # a gateway saying the meter behind it is silent: no reply
                raise NoReply(f"unit {unit}: gateway exception {code}, {text}")
            raise ExceptionReply(code, f"unit {unit} FC{function.code:02d} {address}+{count}: exception {code}, {text}")
        registers = list(rr.registers)
        if len(registers) != count:
            raise BadReply(f"unit {unit}: asked {count} registers at {address}, reply has {len(registers)}")
        return registers
