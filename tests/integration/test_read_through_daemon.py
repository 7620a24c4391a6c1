"""`read` while the daemon runs: it holds the RS-485 line, so `read` asks it, over the Unix socket
beside the buffer, and the daemon reads between its polls. One master on the line."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.conftest import PtyPair, Simulator, cli, wait_until
from tests.integration.daemon_parts import DaemonProcess
from tests.mqtt_parts import Mosquitto, Subscriber


def rtu_site(folder: Path, broker: Mosquitto, port: str, *, interval: str = "1s") -> Path:
    path = folder / "site.yaml"
    path.write_text(
        "gateway: {id: gw1}\n"
        f"storage: {{path: {folder / 'buffer.db'}}}\n"
        f'mqtt: {{url: "mqtt://127.0.0.1:{broker.port}", health_interval: 2s}}\n'
        "clock: {sync_check: none}\n"
        "buses:\n"
        f"  - {{name: rs485-1, type: rtu, port: {port}, baudrate: 9600, timeout: 300ms}}\n"
        "meters:\n"
        f"  - {{id: m1, bus: rs485-1, address: 1, model: eastron-sdm120, interval: {interval}}}\n"
        f"  - {{id: m2, bus: rs485-1, address: 2, model: eastron-sdm120, interval: {interval}}}\n"
    )
    return path


def test_read_goes_through_the_daemon_that_holds_the_line(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator], broker: Mosquitto
) -> None:
    simulator("--model", "eastron-sdm120", "--serial", pty_pair.a, "--ids", "1,2", "--set", "voltage_l1=231.5")
    config = rtu_site(tmp_path, broker, pty_pair.b)
    sub = Subscriber(broker.port, "meters/gw1/meters/+/reading")
    d = DaemonProcess(config, tmp_path / "daemon.log")

    def m2_slots() -> list[str]:
        return [r["slot"] for r in sub.json("/reading") if r["meter"] == "m2"]

    try:
        wait_until(lambda: len(m2_slots()) >= 2, 30, "the daemon polls m2")
        wait_until(lambda: Path(str(tmp_path / "buffer.db") + ".sock").exists(), 30, "the control socket")

        out = cli("read", "-c", str(config), "--json", "--meter", "m2")
        assert out.returncode == 0, out.stdout + out.stderr + d.log()
        assert "through the running daemon" in out.stderr
        docs = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["meter"] for r in docs] == ["m2"]
        assert docs[0]["quality"] == "good", docs[0]
        assert docs[0]["values"]["voltage_l1"] == 231.5
        assert "text" not in docs[0]

        raw = cli("read", "-c", str(config), "--raw")
        assert raw.returncode == 0, raw.stdout + raw.stderr
        assert "m1  eastron-sdm120 on rs485-1" in raw.stdout and "m2  eastron-sdm120" in raw.stdout
        assert "registers" in raw.stdout  # --raw's table: the daemon read the hidden points too

        unknown = cli("read", "-c", str(config), "--meter", "m9")
        assert unknown.returncode == 2 and 'unknown meter "m9"' in unknown.stderr

        # The daemon kept polling meanwhile, with no fault of the line; the asked reads were not
        # stored: one reading per slot.
        before = len(m2_slots())
        wait_until(lambda: len(m2_slots()) > before + 2, 30, "more polls of m2")
        assert "unavailable" not in d.log(), d.log()
        assert len(set(m2_slots())) == len(m2_slots()), m2_slots()

        # scan would be a second master on the line: it refuses and names who holds the port.
        scan = cli("scan", "--port", pty_pair.b, "--ids", "1-2")
        assert scan.returncode == 2, scan.stdout + scan.stderr
        assert f"pid {d.proc.pid}" in scan.stderr and "meter-collector" in scan.stderr, scan.stderr
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
    assert not Path(str(tmp_path / "buffer.db") + ".sock").exists()  # removed on stop


def test_a_second_daemon_on_the_same_buffer_refuses_and_a_dead_ones_socket_is_taken_over(
    pty_pair: PtyPair, tmp_path: Path, simulator: type[Simulator], broker: Mosquitto
) -> None:
    simulator("--model", "eastron-sdm120", "--serial", pty_pair.a, "--ids", "1,2")
    config = rtu_site(tmp_path, broker, pty_pair.b)
    sock = Path(str(tmp_path / "buffer.db") + ".sock")
    first = DaemonProcess(config, tmp_path / "first.log")
    try:
        wait_until(sock.exists, 30, "the control socket")
        assert oct(os.stat(sock).st_mode & 0o777) == oct(0o660)
        second = DaemonProcess(config, tmp_path / "second.log")
        try:
            assert second.proc.wait(30) == 1
        finally:
            second.finish()
        assert "another meter-collector is running on this buffer" in second.log(), second.log()
        first.kill()  # SIGKILL: the socket stays behind
    finally:
        first.finish()
    assert sock.exists()
    with socket.socket(socket.AF_UNIX) as s:  # nobody answers on it any more
        assert s.connect_ex(str(sock)) != 0

    # No daemon: read opens the line itself.
    direct = cli("read", "-c", str(config), "--json", "--meter", "m1")
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert "through the running daemon" not in direct.stderr

    again = DaemonProcess(config, tmp_path / "again.log")
    try:
        wait_until(lambda: "meter-collector running" in again.log(), 30, "the daemon starts over the stale socket")
        out = cli("read", "-c", str(config), "--json", "--meter", "m1")
        assert out.returncode == 0 and "through the running daemon" in out.stderr, out.stderr + again.log()
        assert again.term() == 0
    finally:
        again.finish()
