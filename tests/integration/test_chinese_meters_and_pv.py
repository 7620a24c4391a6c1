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
    r = read_json(config, expect=1)  # a meter that failed partly: exit 1
    assert r["quality"] == "partial" and "energy_import" in r["values"]
    assert "no such data" in r["errors"]["vendor_counter"]
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
