"""`read --json` against the simulator in its own process, over Modbus TCP, RTU on a pty pair and RTU
over TCP; Debian's mbpoll reads the same registers as an independent master."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PtyPair, cli, free_port
from tests.integration.mbpoll import mbpoll

POINTS = {  # SDM630 point -> (input register, factor from the register's float to the published value)
    "voltage_l1": (0x0000, 1.0),
    "current_l1": (0x0006, 1.0),
    "active_power": (0x0034, 0.001),  # the meter counts W; the platform gets kW
    "frequency": (0x0046, 1.0),
    "energy_import": (0x0048, 1.0),
}


def site(tmp: Path, bus: str, *, model: str = "eastron-sdm630", address: int = 1, extra: str = "") -> Path:
    path = tmp / "site.yaml"
    path.write_text(
        f"gateway: {{id: t}}\nbuses:\n  - {bus}\nmeters:\n"
        f"  - {{id: m1, bus: b, address: {address}, model: {model}{extra}}}\n"
    )
    return path


def read_json(config: Path, *more: str) -> dict:  # type: ignore[type-arg]
    out = cli("read", "-c", str(config), "--json", *more)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])  # type: ignore[no-any-return]


def check_against_mbpoll(reading: dict, target: list[str], unit: int) -> None:  # type: ignore[type-arg]
    assert reading["quality"] == "good" and reading["errors"] == {}
    for name, (register, factor) in POINTS.items():
        floats = mbpoll(target, unit, register, 1, "3", float32=True)
        words = mbpoll(target, unit, register, 2, "3")
        # mbpoll prints 6 significant digits
        assert reading["values"][name] == pytest.approx(floats[register] * factor, rel=1e-5), name
        # mbpoll prints signed 16-bit values with the unsigned one first: compare the words themselves.
        assert reading["registers"][name] == [int(words[register]) & 0xFFFF, int(words[register + 1]) & 0xFFFF]


def test_read_sdm630_over_modbus_tcp_matches_mbpoll(tmp_path: Path, simulator: type) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm630", "--tcp", f"127.0.0.1:{port}", "--ids", "1-3", "--static")
    config = site(tmp_path, f"{{name: b, type: tcp, host: 127.0.0.1, port: {port}}}", address=3)
    reading = read_json(config, "--raw")
    assert reading["meter"] == "m1" and reading["ts"].endswith("Z")
    assert reading["units"]["active_power"] == "kW" and reading["units"]["energy_import"] == "kWh"
    check_against_mbpoll(reading, ["-m", "tcp", "-p", str(port), "127.0.0.1"], 3)
    # Seven points spread over 0x0000-0x0049 cost at most three requests.
    seven = "[voltage_l1, current_l1, active_power_l1, active_power, power_factor, frequency, energy_import]"
    config = site(
        tmp_path, f"{{name: b, type: tcp, host: 127.0.0.1, port: {port}}}", address=3, extra=f", points: {seven}"
    )
    reading = read_json(config)
    assert len(reading["values"]) == 7 and reading["requests"] <= 3


def test_read_sdm630_over_rtu_on_a_pty_pair_matches_mbpoll(pty_pair: PtyPair, tmp_path: Path, simulator: type) -> None:
    sim = simulator("--model", "eastron-sdm630", "--serial", pty_pair.a, "--ids", "1-2", "--static")
    config = site(tmp_path, f"{{name: b, type: rtu, port: {pty_pair.b}, baudrate: 9600, timeout: 300ms}}", address=2)
    reading = read_json(config, "--raw")
    check_against_mbpoll(reading, ["-m", "rtu", "-b", "9600", "-P", "none", pty_pair.b], 2)
    report = sim.stop()
    assert "unit 2:" in report


def test_read_over_rtu_over_tcp(tmp_path: Path, simulator: type) -> None:
    port = free_port()
    simulator("--model", "tuf-2000m", "--rtu-over-tcp", f"127.0.0.1:{port}", "--ids", "5", "--static")
    config = site(
        tmp_path, f"{{name: b, type: rtu-over-tcp, host: 127.0.0.1, port: {port}}}", model="tuf-2000m", address=5
    )
    reading = read_json(config, "--raw")
    assert reading["quality"] == "good"
    # volume = the LONG totaliser + its REAL4 fraction, both low word first.
    assert reading["values"]["volume"] == pytest.approx(reading["raw"]["volume"] + reading["raw"]["volume_fraction"])
    assert reading["units"] == {**reading["units"], "volume": "m³", "flow_rate": "m³/h"}


def test_dtsu666_raw_shows_the_meters_ct_and_pt_ratio_registers(tmp_path: Path, simulator: type) -> None:
    port = free_port()
    simulator("--model", "chint-dtsu666", "--tcp", f"127.0.0.1:{port}", "--static")
    config = site(
        tmp_path,
        f"{{name: b, type: tcp, host: 127.0.0.1, port: {port}}}",
        model="chint-dtsu666",
        extra=", calibration: {ct_ratio: 40}",
    )
    table = cli("read", "-c", str(config), "--raw")
    assert table.returncode == 0, table.stderr
    assert "ct_ratio_setting" in table.stdout and "pt_ratio_setting" in table.stdout
    assert "(not published)" in table.stdout
    reading = read_json(config, "--raw")
    assert "ct_ratio_setting" not in reading["values"]
    assert reading["values"]["current_l1"] == pytest.approx(reading["meter_values"]["current_l1"] * 40)
    assert reading["values"]["voltage_l1"] == pytest.approx(reading["meter_values"]["voltage_l1"])


def test_a_dead_meter_fails_alone_with_exit_1(tmp_path: Path, simulator: type) -> None:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", "1")
    dead = free_port()
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: up, type: tcp, host: 127.0.0.1, port: {port}, timeout: 300ms}}\n"
        f"  - {{name: down, type: tcp, host: 127.0.0.1, port: {dead}, timeout: 300ms}}\n"
        "meters:\n  - {id: alive, bus: up, address: 1, model: eastron-sdm120}\n"
        "  - {id: gone, bus: down, address: 1, model: eastron-sdm120}\n"
        "  - {id: absent, bus: up, address: 9, model: eastron-sdm120}\n"
    )
    out = cli("read", "-c", str(path), "--json")
    assert out.returncode == 1
    readings = {r["meter"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert readings["alive"]["quality"] == "good"
    assert readings["gone"]["quality"] == "bad" and "cannot open" in readings["gone"]["errors"]["voltage_l1"]
    # An unknown unit behind a TCP gateway: exception 11, "gateway target device failed to respond".
    assert (
        readings["absent"]["quality"] == "bad" and "gateway exception 11" in readings["absent"]["errors"]["voltage_l1"]
    )


def test_models_list_and_show_print_the_map_and_the_plan() -> None:
    listed = cli("models", "list")
    assert listed.returncode == 0 and "eastron-sdm630" in listed.stdout
    shown = cli("models", "show", "tuf-2000m")
    assert shown.returncode == 0
    assert "CDAB" in shown.stdout and "FC03 0x0000+28" in shown.stdout and "FC03 0x059d+2" in shown.stdout
    # A DL/T 645 model as its protocol speaks it: identifiers, BCD formats, signs, block offsets.
    dlt = cli("models", "show", "dlt645-2007")
    assert dlt.returncode == 0 and "read 11H" in dlt.stdout and " fc " not in dlt.stdout
    assert "float32" not in dlt.stdout and "FC03" not in dlt.stdout
    rows = {line.split()[0]: line.split()[1:4] for line in dlt.stdout.splitlines()[3:] if line.strip()}
    assert rows["energy_import"] == ["00010000", "XXXXXX.XX", "-"]
    assert rows["current_l1"] == ["02020100", "XXX.XXX", "signed"]
    old = cli("models", "show", "dlt645-1997")
    assert old.returncode == 0 and "read 01H" in old.stdout and "9010" in old.stdout
    water = cli("models", "show", "cjt188-water")
    assert water.returncode == 0 and "901F" in water.stdout and "settlement" in water.stdout
    unknown = cli("models", "show", "eastron-sdm63")
    assert unknown.returncode == 2 and 'did you mean "eastron-sdm630"' in unknown.stderr
