"""Modbus RTU framing: the CRC and the frame around a PDU (the client checks replies with it, the
simulator answers with it)."""

from __future__ import annotations

import struct


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """Modbus RTU CRC-16 (poly 0xA001, init 0xFFFF), low byte first as sent on the wire."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return struct.pack("<H", crc)


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)
