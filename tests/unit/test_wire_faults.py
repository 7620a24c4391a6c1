"""Wire faults without a wire: what a garbled reply is called, the OS reason of a port that cannot be
opened, scale factors out of range (the simulator's own SunSpec registers), and how `read` renders
a meter that gave nothing."""

from __future__ import annotations

import asyncio
import socket
import struct
import termios
from datetime import UTC, datetime
from pathlib import Path

import pytest
import serial

from collector.config import load_config
from collector.daemon.calibration import calibrate
from collector.readout import reading_json, render_reading
from collector.simulator.meters import SunSpecDevice
from drivers.errors import CannotOpen, cannot_open, os_reason
from drivers.modbus import sunspec
from drivers.modbus.device import read_device
from drivers.modbus.rtu import crc16
from drivers.modbus.transport import describe_garbage, preview
from drivers.model import Function
from drivers.reading import DeviceRead


def rtu(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body)


def mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1 if length is None else length, unit) + pdu


REPLY = bytes([3, 4, 0x43, 0x66, 0x80, 0x00])
SENT = mbap(7, 1, bytes([3, 0, 0, 0, 2]))


@pytest.mark.parametrize(
    ("kind", "data", "why"),
    [
        ("tcp", b"\x00\x07\x00", "3 bytes, shorter than a Modbus TCP header"),
        ("tcp", b"\x00\x07\x12\x34" + bytes(8), "protocol id 0x1234, not 0: not Modbus TCP"),
        ("tcp", rtu(1, REPLY), "an RTU frame: a serial server wanting type rtu-over-tcp?"),
        ("tcp", mbap(7, 1, REPLY, length=3), "MBAP length 3, but 7 bytes follow it"),
        ("tcp", mbap(7, 9, REPLY), "from unit 9, asked unit 1"),
        ("tcp", mbap(6, 1, REPLY), "transaction id 6, asked 7"),
        ("tcp", mbap(7, 1, b"\x41\x00"), "function code 65 with 1 data bytes cannot be decoded"),
        ("rtu", rtu(2, REPLY), "a frame from unit 2, asked unit 1"),
        ("rtu", rtu(1, REPLY)[:-1] + b"\x00", "no valid RTU frame: noise, or a wrong baud rate or parity?"),
        ("rtu-over-tcp", b"\xff\xfe\xfd\xfc\xfb", "no valid RTU frame: noise, or a wrong baud rate or parity?"),
    ],
)
def test_a_garbled_reply_says_what_is_wrong_with_it(kind: str, data: bytes, why: str) -> None:
    assert why in describe_garbage(kind, data, 1, SENT)


def test_preview_shows_the_first_bytes_and_the_length() -> None:
    assert preview(b"\x01\x03") == "01 03"
    assert preview(bytes(20)) == " ".join(["00"] * 16) + " ... (20 bytes)"


def test_the_os_reason_of_a_missing_port_and_of_a_pty_refusing_parity(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyUSB9")
    with pytest.raises(serial.SerialException) as opened:
        serial.Serial(missing, 9600)
    # pyserial says "could not open port ...: [Errno 2] No such file or directory: '...'"
    assert os_reason(opened.value) == "No such file or directory"
    error = cannot_open(f"{missing} 9600 8N1", opened.value)
    assert isinstance(error, CannotOpen) and str(error) == f"cannot open {missing} 9600 8N1: No such file or directory"
    refused = termios.error(22, "Invalid argument")  # what tcsetattr raises; not an OSError
    assert not isinstance(refused, OSError)
    assert str(cannot_open("/dev/ttyUSB0 9600 8E1", refused, parity="E")) == (
        "cannot open /dev/ttyUSB0 9600 8E1: Invalid argument (the port refuses parity E; a pty does: use N in tests)"
    )
    assert str(cannot_open("x", ValueError("Invalid baud rate: 1"))) == "cannot open x: Invalid baud rate: 1"
    assert str(cannot_open("x", None)) == "cannot open x: no reason given"


def test_the_os_reason_of_a_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused
        with pytest.raises(ConnectionRefusedError) as refused, socket.create_connection(("127.0.0.1", port)):
            pass
    assert os_reason(refused.value) == "Connection refused"


class Registers:
    """The simulator's SunSpec device read directly, as a RegisterReader (no wire)."""

    def __init__(self, device: SunSpecDevice) -> None:
        self.device = device

    async def read(
        self, unit: int, function: Function, address: int, count: int, *, retries: int | None = None
    ) -> list[int]:
        words = self.device.read(function.code, address, count)
        assert not isinstance(words, int), f"exception {words}"
        return words


def read_inverter(**overrides: float) -> DeviceRead:
    async def go() -> DeviceRead:
        regs = Registers(SunSpecDevice(1, static=True, overrides=overrides))
        blocks = await sunspec.discover(regs, 1)
        model = sunspec.build_model(blocks, await sunspec.read_common(regs, 1, blocks))
        return await read_device(regs, 1, model, [p.name for p in model.published], gap=48)

    return asyncio.run(go())


@pytest.mark.parametrize("sf", [400, -400, 11, -11])
def test_a_scale_factor_outside_minus_10_to_10_fails_its_point_only(sf: int) -> None:
    r = read_inverter(W_SF=sf)
    assert r.errors == {"ac_power": f"scale factor W_SF = {sf} is outside -10..10"}
    assert r.failure is None
    assert {"frequency", "energy_yield_total", "dc_power", "voltage_l1", "dc_power_1"} <= set(r.values)
    assert "ac_power" in r.raw and "ac_power" not in r.values  # the register was read, not scaled


def test_scale_factors_at_the_limits_and_an_unimplemented_one() -> None:
    assert read_inverter(W_SF=10).errors == {} and read_inverter(W_SF=-10).errors == {}
    r = read_inverter(W_SF=0x8000 - 0x10000)  # SunSpec's "not implemented" for a sunssf
    assert r.errors == {"ac_power": "scale factor W_SF unavailable"}
    r = read_inverter(DCW_SF=99)  # model 103's for the total, model 160's for every module's power
    assert r.errors.keys() == {"dc_power", "dc_power_1", "dc_power_2"}
    assert set(r.errors.values()) == {"scale factor DCW_SF = 99 is outside -10..10"}


def test_the_sunspec_name_of_a_scale_factor_point() -> None:
    assert sunspec.label("m103_w_sf") == "W_SF"
    assert sunspec.label("m103_hz_sf") == "Hz_SF"
    assert sunspec.label("m160_dcw_sf") == "DCW_SF"
    assert sunspec.label("m999_w_sf") == "m999_w_sf" and sunspec.label("energy_scale") == "energy_scale"


def test_the_simulated_inverter_refuses_a_point_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="W_Sf: a SunSpec inverter holds raw registers of model 103 or 160"):
        SunSpecDevice(1, overrides={"W_Sf": 400})


def test_a_meter_that_gave_nothing_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n  - {name: rs485-1, type: rtu, port: /dev/ttyUSB9}\n"
        "meters:\n  - {id: a, bus: rs485-1, address: 1, model: eastron-sdm120, points: [voltage_l1, frequency]}\n"
    )
    config = load_config(path, check_files=False)
    meter = config.meter("a")
    reason = "cannot open /dev/ttyUSB9 9600 8N1: No such file or directory"
    failed = DeviceRead(failure=CannotOpen(reason), errors={"voltage_l1": reason, "frequency": reason}, requests=1)
    now = datetime.now(UTC)
    reading = calibrate(meter, failed, now, now)
    for raw in (False, True):
        lines = render_reading(reading, config, raw=raw).splitlines()
        assert lines[1:] == [f"  error: {reason}"]
    obj = reading_json(reading, config)
    assert obj["failure"] == reason and obj["errors"] == {"voltage_l1": reason, "frequency": reason}
    # A point that failed on its own before the meter went silent keeps its line.
    partial = DeviceRead(failure=CannotOpen(reason), errors={"voltage_l1": "exception 2", "frequency": reason})
    lines = render_reading(calibrate(meter, partial, now, now), config).splitlines()
    assert lines[1:] == [f"  error: {reason}", "  voltage_l1  error: exception 2"]
    good = DeviceRead(values={"voltage_l1": 230.5, "frequency": 50.0}, raw={"voltage_l1": 230.5, "frequency": 50.0})
    assert reading_json(calibrate(meter, good, now, now), config)["failure"] is None
