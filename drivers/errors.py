"""Errors a bus transaction can end in, common to every protocol.

Each says what a technician needs: which meter, what happened, and whether to look at the wire
(no reply), the meter's configuration (exception reply) or the model (bad reply).
"""

from __future__ import annotations

import errno
import os


class TransportError(Exception):
    """A transaction failed; the bus itself may still be fine."""


class NotConnected(TransportError):
    """The port or the TCP endpoint cannot be opened (unplugged adapter, refused connection)."""


class CannotOpen(NotConnected):
    """Opening the port or the connection failed; the message carries the operating system's reason."""


class NoReply(TransportError):
    """The meter did not answer within the timeout (wrong address, baud rate, wiring, power)."""


class Garbled(NoReply):
    """Bytes came back within the timeout, but no reply could be read from them: noise, a wrong baud
    rate or parity, two meters on one address, or the wrong framing (Modbus TCP against a serial
    server that speaks RTU over TCP). Nothing usable came, so it ends a read like no reply."""


class BadReply(TransportError):
    """A reply came but cannot be right (wrong length, wrong register count, bad checksum)."""


class ExceptionReply(TransportError):
    """The meter answered with a protocol exception (Modbus exception code, DL/T 645 error word)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


MODBUS_EXCEPTIONS = {
    1: "illegal function (the meter does not support this function code: holding vs input?)",
    2: "illegal data address (a register the meter does not have: check the model's map)",
    3: "illegal data value (count too large for this meter?)",
    4: "server device failure",
    5: "acknowledge (busy, retry later)",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond (meter behind the gateway is silent)",
}


def os_reason(exc: BaseException | None) -> str:
    """The operating system's words for why a port or a connection could not be opened.

    pyserial wraps errno in SerialException("could not open port X: [Errno 2] ..."); a pty that
    refuses a setting raises termios.error(22, "Invalid argument"), which is no OSError.
    """
    if exc is None:
        return "no reason given"
    code = getattr(exc, "errno", None)
    if not isinstance(code, int) and len(exc.args) == 2 and isinstance(exc.args[0], int):
        code = exc.args[0]  # termios.error
    if isinstance(code, int) and code > 0:
        text = os.strerror(code)
        if code == errno.EAGAIN:
            text += " (the port is in use by another program)"
        elif code == errno.EACCES:
            text += " (is the user in the dialout group?)"
        return text
    if isinstance(exc, OSError) and exc.strerror:  # e.g. socket.gaierror: "Name or service not known"
        return exc.strerror
    return str(exc) or type(exc).__name__


def cannot_open(where: str, exc: BaseException | None, *, parity: str = "N") -> CannotOpen:
    """``cannot open /dev/ttyUSB0 9600 8N1: No such file or directory``."""
    reason = os_reason(exc)
    code = getattr(exc, "errno", None) or (exc.args[0] if exc is not None and exc.args else None)
    if parity != "N" and code == errno.EINVAL:
        reason += f" (the port refuses parity {parity}; a pty does: use N in tests)"
    return CannotOpen(f"cannot open {where}: {reason}")
