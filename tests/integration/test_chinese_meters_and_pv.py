"""DL/T 645 and CJ/T 188 meters on pty lines, SunSpec inverters over TCP, all through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PtyPair, Simulator, cli, free_port

DLT645_ADDRESS = "210987654321"
CJT188_ADDRESS = "00000012345678"


def site(tmp: Path, bus: str, meter: str) -> Path:
    path = tmp / "site.yaml"
    path.write_text(f"gateway: {{id: t}}\nbuses:\n  - {bus}\nmeters:\n  - {meter}\n")
    return path


def read_json(config: Path, expect: int = 0) -> dict:  # type: ignore[type-arg]
    out = cli("read", "-c", str(config), "--json", "--raw")
    assert out.returncode == expect, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[0])  # type: ignore[no-any-return]


def test_dlt645_meter_read_and_scanned_on_a_pty(pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]) -> None:
    simulator(
        "--model",
        "dlt645-2007",
        "--serial",
        pty_pair.a,
        "--baud",
        "2400",
        "--ids",
        DLT645_ADDRESS,
        "--static",
        "--set",
        "current_l1=-12.5",
        "--set",
        "active_power=-3.2",
        "--set",
        "power_factor=-0.95",
        "--set",
        "energy_import=15321.07",
        "--set",
        "voltage_l1=230.5",
        "--set",
        "frequency=50.01",
    )
    config = site(
        tmp_path,
        f"{{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N}}",
        f'{{id: office, bus: rs485-2, address: "{DLT645_ADDRESS}", model: dlt645-2007, '
        "points: [energy_import, energy_export, voltage_l1, current_l1, active_power, power_factor, "
        "frequency]}",
    )
    r = read_json(config)
    assert r["quality"] == "good", r["errors"]
    assert r["values"] == {
        **r["values"],
        "energy_import": 15321.07,
        "voltage_l1": 230.5,
        "current_l1": -12.5,
        "active_power": -3.2,
        "power_factor": -0.95,
        "frequency": 50.01,
    }
    assert r["values"]["energy_export"] >= 0
    assert r["units"] == {**r["units"], "energy_import": "kWh", "active_power": "kW", "current_l1": "A"}
    # The wire bytes of import energy, least significant first: 15321.07 -> 07 21 53 01
    assert r["registers"]["energy_import"] == [0x07, 0x21, 0x53, 0x01]
    scan = cli("scan", "--port", pty_pair.b, "--protocol", "dlt645", "--baud", "2400", "--parity", "N")
    assert scan.returncode == 0, scan.stderr
    assert f"{DLT645_ADDRESS}: dlt645-2007" in scan.stdout
    assert f'address: "{DLT645_ADDRESS}", model: dlt645-2007' in scan.stdout


def test_dlt645_unknown_identifier_and_a_silent_address(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    simulator("--model", "dlt645-2007", "--serial", pty_pair.a, "--baud", "2400", "--ids", DLT645_ADDRESS)
    model = tmp_path / "acme-dl1.yaml"
    model.write_text(
        'vendor: Acme\nmodel: DL1\nkind: electricity\nprotocol: dlt645\nmanual: "Acme DL1 manual"\n'
        "points:\n  - {name: energy_import, address: 0x00010000, format: XXXXXX.XX, unit: kWh}\n"
        "  - {name: vendor_counter, address: 0x04A00501, format: XXXX, unit: '-'}\n"
    )
    config = site(
        tmp_path,
        f"{{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N, timeout: 300ms}}",
        f'{{id: office, bus: rs485-2, address: "{DLT645_ADDRESS}", model: ./acme-dl1.yaml}}',
    )
    # An identifier the meter does not have (error word 02H) is absent, not a fault: exit 0, good.
    r = read_json(config)
    assert r["quality"] == "good" and r["errors"] == {} and "energy_import" in r["values"]
    assert "vendor_counter" not in r["values"] and "error word 02H" in r["absent"]["vendor_counter"]
    other = site(
        tmp_path,
        f"{{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N, timeout: 300ms, retries: 0}}",
        '{id: nobody, bus: rs485-2, address: "000000000099", model: dlt645-2007, points: [energy_import]}',
    )
    out = cli("read", "-c", str(other), "--json")
    assert out.returncode == 1
    assert "no reply" in json.loads(out.stdout)["errors"]["energy_import"]


def test_cjt188_water_meter_read_and_scanned_on_a_pty(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    simulator(
        "--model",
        "cjt188-water",
        "--serial",
        pty_pair.a,
        "--baud",
        "2400",
        "--ids",
        CJT188_ADDRESS,
        "--static",
        "--set",
        "volume=1234.56",
    )
    config = site(
        tmp_path,
        f"{{name: water-bus, type: cjt188, port: {pty_pair.b}, baudrate: 2400, parity: N}}",
        f'{{id: water-main, bus: water-bus, address: "{CJT188_ADDRESS}", model: cjt188-water}}',
    )
    r = read_json(config)
    assert r["quality"] == "good", r["errors"]
    assert r["values"]["volume"] == 1234.56 and r["units"]["volume"] == "m³"
    assert r["values"]["volume_settlement"] <= r["values"]["volume"]
    scan = cli("scan", "--port", pty_pair.b, "--protocol", "cjt188", "--baud", "2400", "--parity", "N")
    assert scan.returncode == 0 and f"{CJT188_ADDRESS}: cjt188-water" in scan.stdout


def test_cjt188_meters_of_both_di_byte_orders_read_with_one_model(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    """One meter answers only 1F 90 (the standard's order), the other only 90 1F: both are read with
    cjt188-water and no per-meter setting, and `scan` finds the one that speaks the other order."""
    other = PtyPair(tmp_path / "second")
    (tmp_path / "second").mkdir()
    other.start()
    try:
        second = "78331505104145"
        common = ["--model", "cjt188-water", "--baud", "2400", "--static", "--set", "volume=42.5"]
        simulator(*common, "--serial", pty_pair.a, "--ids", CJT188_ADDRESS, "--di-order", "little")
        simulator(*common, "--serial", other.a, "--ids", second, "--di-order", "big")
        path = tmp_path / "site.yaml"
        path.write_text(
            "gateway: {id: t}\nbuses:\n"
            f"  - {{name: w1, type: cjt188, port: {pty_pair.b}, baudrate: 2400, parity: N, timeout: 300ms}}\n"
            f"  - {{name: w2, type: cjt188, port: {other.b}, baudrate: 2400, parity: N, timeout: 300ms}}\n"
            f'meters:\n  - {{id: standard, bus: w1, address: "{CJT188_ADDRESS}", model: cjt188-water}}\n'
            f'  - {{id: swapped, bus: w2, address: "{second}", model: cjt188-water}}\n'
        )
        out = cli("read", "-c", str(path), "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        readings = {r["meter"]: r for r in map(json.loads, out.stdout.splitlines())}
        for meter in ("standard", "swapped"):
            assert readings[meter]["quality"] == "good", readings[meter]["errors"]
            assert readings[meter]["values"]["volume"] == 42.5
        scan = cli("scan", "--port", other.b, "--protocol", "cjt188", "--baud", "2400", "--parity", "N")
        assert scan.returncode == 0 and f"{second}: cjt188-water" in scan.stdout
    finally:
        other.stop()


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_sunspec_inverter_discovered_at_each_base(base: int) -> None:
    import asyncio

    from collector.simulator.meters import SunSpecDevice
    from collector.simulator.modbus import Slave, TcpServer
    from drivers import registry
    from drivers.modbus.reader import ModbusReader
    from drivers.modbus.transport import Link

    async def go() -> None:
        srv = TcpServer(
            Slave({3: SunSpecDevice(3, base=base, modules=3, static=True)}, silent_unknown=False), "127.0.0.1", 0
        )
        await srv.start()
        reader = ModbusReader(Link(kind="tcp", host="127.0.0.1", port=srv.port), 48)
        try:
            r = await reader.read_meter(3, registry.load("sunspec-inverter"), [])
        finally:
            reader.close()
            await srv.stop()
        assert r.failure is None and r.model is not None
        assert r.model.vendor == "Demo Solar" and "103" in r.model.manual and "160" in r.model.manual
        assert {"ac_power", "energy_yield_total", "frequency", "dc_power_3", "inverter_state"} <= set(r.values)
        assert r.values["inverter_state"] in (2.0, 4.0)
        # Unimplemented points hold SunSpec's sentinel: missing with a reason, never a number.
        assert "dc_voltage" in r.values and "inverter_temperature" in r.values
        assert r.requests <= 3  # the planner coalesces the discovered map

    asyncio.run(go())


def test_sunspec_read_json_and_meta_without_a_hand_written_map(tmp_path: Path, simulator: type[Simulator]) -> None:
    port = free_port()
    simulator("--model", "sunspec-inverter", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")
    config = site(
        tmp_path,
        f"{{name: pv-lan, type: tcp, host: 127.0.0.1, port: {port}}}",
        "{id: roof-pv, bus: pv-lan, address: 1, model: sunspec-inverter}",
    )
    r = read_json(config)
    assert r["quality"] == "good", r["errors"]
    assert r["units"]["ac_power"] == "kW" and r["units"]["energy_yield_total"] == "kWh"
    assert r["values"]["energy_yield_total"] > 0
    # Scale factors applied: raw W × 10^W_SF, then W -> kW.
    assert r["values"]["ac_power"] == pytest.approx(r["raw"]["ac_power"] * 10 ** r["raw"]["m103_w_sf"] / 1000)
    scan = cli("scan", "--host", f"127.0.0.1:{port}", "--ids", "1-2")
    assert "1: sunspec-inverter (SunSpec models 1,103,160" in scan.stdout


def test_a_single_phase_view_of_sunspec_and_a_dlt645_meter_without_phases_read_good(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]
) -> None:
    """What the meters say they lack is absent: `read --json` exits 0, quality good, every value they have."""
    port = free_port()
    lacks = ["--set", "PPVphAB=65535", "--set", "PPVphBC=65535", "--set", "PPVphCA=65535"]  # not implemented
    simulator("--model", "sunspec-inverter", "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static", *lacks)
    phases = "voltage_l2,voltage_l3,current_l2,current_l3,active_power_l2,active_power_l3"
    simulator(
        "--model", "dlt645-2007", "--serial", pty_pair.a, "--baud", "2400", "--ids", DLT645_ADDRESS, "--absent", phases
    )
    path = tmp_path / "site.yaml"
    path.write_text(
        "gateway: {id: t}\nbuses:\n"
        f"  - {{name: pv-lan, type: tcp, host: 127.0.0.1, port: {port}}}\n"
        f"  - {{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N, timeout: 300ms}}\n"
        "meters:\n  - {id: roof-pv, bus: pv-lan, address: 1, model: sunspec-inverter}\n"
        f'  - {{id: office, bus: rs485-2, address: "{DLT645_ADDRESS}", model: dlt645-2007}}\n'
    )
    out = cli("read", "-c", str(path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    pv, office = (json.loads(line) for line in out.stdout.splitlines())
    assert pv["quality"] == "good" and pv["errors"] == {}
    assert {"voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1"} <= set(pv["absent"])
    assert {"ac_power", "voltage_l1", "energy_yield_total"} <= set(pv["values"])
    assert office["quality"] == "good" and office["errors"] == {}
    assert sorted(office["absent"]) == sorted(phases.split(","))
    assert {"energy_import", "voltage_l1", "current_l1", "active_power", "frequency"} <= set(office["values"])


def test_dlt645_data_block_in_follow_up_frames(pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]) -> None:
    # The simulator sends at most 16 data bytes a frame: the 20-byte tariff block needs B1H + a 12H follow-up.
    simulator("--model", "dlt645-2007", "--serial", pty_pair.a, "--baud", "2400", "--ids", DLT645_ADDRESS, "--static")
    tariffs = [f"energy_import_t{i}" for i in range(1, 5)]
    config = site(
        tmp_path,
        f"{{name: rs485-2, type: dlt645, port: {pty_pair.b}, baudrate: 2400, parity: N}}",
        f'{{id: office, bus: rs485-2, address: "{DLT645_ADDRESS}", model: dlt645-2007, '
        f"points: [energy_import, {', '.join(tariffs)}]}}",
    )
    r = read_json(config)
    assert r["quality"] == "good", r["errors"]
    assert r["requests"] == 3  # the total, then the block in two frames
    assert sum(r["values"][t] for t in tariffs) == pytest.approx(r["values"]["energy_import"], abs=0.05)


def test_dlt645_1997_meter(pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator]) -> None:
    simulator(
        "--model",
        "dlt645-1997",
        "--serial",
        pty_pair.a,
        "--baud",
        "1200",
        "--ids",
        DLT645_ADDRESS,
        "--static",
        "--set",
        "energy_import=8123.45",
        "--set",
        "voltage_l1=231",
        "--set",
        "current_l1=12.34",
    )
    config = site(
        tmp_path,
        f"{{name: old-meters, type: dlt645, port: {pty_pair.b}, baudrate: 1200, parity: N}}",
        f'{{id: annex, bus: old-meters, address: "{DLT645_ADDRESS}", model: dlt645-1997}}',
    )
    r = read_json(config)
    assert r["quality"] == "good", r["errors"]
    assert r["values"] == {**r["values"], "energy_import": 8123.45, "voltage_l1": 231.0, "current_l1": 12.34}
    assert r["requests"] == 10  # one 2-byte identifier per point
    # `scan` tells a 1997 meter from a 2007 one (it refuses the 2007 read) and proposes its model.
    scan = cli("scan", "--port", pty_pair.b, "--protocol", "dlt645", "--baud", "1200", "--parity", "N")
    assert scan.returncode == 0 and f'address: "{DLT645_ADDRESS}", model: dlt645-1997' in scan.stdout, scan.stdout


def test_scan_tells_the_two_dtsu666_energy_blocks_apart(simulator: type[Simulator]) -> None:
    for model in ("chint-dtsu666", "chint-dtsu666-401e"):
        port = free_port()
        simulator("--model", model, "--tcp", f"127.0.0.1:{port}", "--ids", "1", "--static")
        scan = cli("scan", "--host", f"127.0.0.1:{port}", "--ids", "1")
        assert scan.returncode == 0 and f"1: {model} (" in scan.stdout, scan.stdout


def test_a_dlt645_identifier_refused_once_is_not_asked_again_until_a_new_reader(
    pty_pair: PtyPair, simulator: type[Simulator]
) -> None:
    """The daemon's reader lives as long as its config: after the first read a poll asks only the
    identifiers that have answers; a new reader (a reload) asks everything again."""
    import asyncio

    from drivers import registry
    from drivers.dlt645.device import Dlt645Reader
    from drivers.serialline import SerialLine
    from drivers.serialport import SerialSettings

    lacks = "voltage_l2,voltage_l3,current_l2,current_l3"
    simulator("--model", "dlt645-2007", "--serial", pty_pair.a, "--ids", DLT645_ADDRESS, "--absent", lacks)
    model = registry.load("dlt645-2007")
    names = [p.name for p in model.published]
    identifiers = len({p.address for p in model.points})

    async def polls(reader: Dlt645Reader, n: int) -> list[tuple[int, dict[str, str], dict[str, str]]]:
        out = []
        for _ in range(n):
            before = reader.requests
            r = await reader.read_meter(DLT645_ADDRESS, model, names, retries=1)
            out.append((reader.requests - before, r.errors, r.absent))
        return out

    async def go() -> tuple[
        list[tuple[int, dict[str, str], dict[str, str]]], list[tuple[int, dict[str, str], dict[str, str]]]
    ]:
        line = SerialLine(SerialSettings(pty_pair.b, 9600), timeout=1.0)
        first = await polls(Dlt645Reader(line), 3)
        again = await polls(Dlt645Reader(line), 1)
        line.close()
        return first, again

    first, again = asyncio.run(go())
    for _, errors, absent in first + again:
        assert errors == {} and sorted(absent) == sorted(lacks.split(","))
    # The first poll asks every identifier (a data block may take a follow-up frame), then only
    # those with answers: four requests fewer; a new reader (a reload) asks all of them again.
    assert first[0][0] >= identifiers
    assert first[1][0] == first[2][0] == first[0][0] - 4
    assert again[0][0] == first[0][0]
