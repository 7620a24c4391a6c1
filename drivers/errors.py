"""Errors a bus transaction can end in, common to every protocol.

Each says what a technician needs: which meter, what happened, and whether to look at the wire
(no reply), the meter's configuration (exception reply) or the model (bad reply).
"""

from __future__ import annotations


class TransportError(Exception):
    """A transaction failed; the bus itself may still be fine."""


class NotConnected(TransportError):
    """The port or the TCP endpoint cannot be opened (unplugged adapter, refused connection)."""


class NoReply(TransportError):
    """The meter did not answer within the timeout (wrong address, baud rate, wiring, power)."""


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
