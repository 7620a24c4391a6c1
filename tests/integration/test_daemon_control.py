"""Operating the daemon: systemd notifications and watchdog, SIGHUP reload, the buffer verbs, MQTT 3.1.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Simulator, cli, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, buffered, site_config
from tests.mqtt_parts import Mosquitto, Subscriber


def sdm120s(simulator: type[Simulator], n: int) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", f"1-{n}")
    return port


def test_ready_watchdog_and_stopping_reach_systemd(tmp_path: Path, simulator: type[Simulator]) -> None:
    sim = sdm120s(simulator, 1)
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sock_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(sock_path)
        s.settimeout(10)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"}
        d = DaemonProcess(
            site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=1),
            tmp_path / "daemon.log",
            env=env,
        )
        env["WATCHDOG_PID"] = str(d.proc.pid)
        got: list[str] = []

        def receive_until(done: Callable[[], bool], timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} within {timeout:g} s; got {got}"
                s.settimeout(left)
                with contextlib.suppress(TimeoutError):
                    got.append(s.recv(1000).decode())

        try:
            receive_until(lambda: sum("WATCHDOG=1" in m for m in got) >= 3, 20, "3 watchdog pings")
            d.proc.send_signal(signal.SIGTERM)
            receive_until(lambda: "STOPPING=1" in "".join(got), 20, "STOPPING=1")
            assert d.proc.wait(20) == 0
        finally:
            d.finish()
            broker.stop()
    text = "\n".join(got)
    assert text.index("READY=1") < text.index("WATCHDOG=1") < text.index("STOPPING=1")
    assert "STATUS=polling 1 meters" in text


def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(tmp_path: Path, simulator: type[Simulator]) -> None:
    sim = sdm120s(simulator, 2)
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=1)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 20, "readings of m1")
        good = config.read_text()
        config.write_text(
            good.replace("meters:\n", "meters:\n  - {id: broken, bus: nowhere, address: 5, model: eastron-sdm120}\n")
        )
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused:" in d.log(), 20, '"reload refused:" in the log')
        assert d.proc.poll() is None  # still running, on the old config
        site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=2)
        d.proc.send_signal(signal.SIGHUP)
        sub.wait_for(lambda: any(r["meter"] == "m2" for r in sub.json("/reading")), 20, "readings of m2")
        assert d.term() == 0
    finally:
        d.finish()
        sub.close()
        broker.stop()
    log = d.log()
    assert "reload refused:" in log and 'unknown bus "nowhere"' in log
    seqs = sorted({r["seq"] for r in sub.json("/reading")} | {e["seq"] for e in sub.json("/events")})
    assert seqs == list(range(1, seqs[-1] + 1))  # seq goes on across the reload


def test_buffer_stats_and_export_while_the_broker_is_away(tmp_path: Path, simulator: type[Simulator]) -> None:
    sim = sdm120s(simulator, 1)
    config = site_config(tmp_path, mqtt_url=f"mqtt://127.0.0.1:{free_port()}", sim_port=sim, meters=1)
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: len(buffered(tmp_path / "buffer.db")) >= 2, 20, "2 readings in the buffer")
        assert d.term() == 0
    finally:
        d.finish()
    stats = cli("buffer", "stats", "-c", str(config), "--json")
    assert stats.returncode == 0, stats.stderr
    depth = json.loads(stats.stdout)["depth"]
    assert depth >= 2
    export = cli("buffer", "export", "-c", str(config))
    lines = [json.loads(x) for x in export.stdout.splitlines()]
    assert len(lines) == depth
    assert lines[0]["topic"] == "meters/gw1/meters/m1/reading" and lines[0]["payload"]["seq"] == 1


def test_mqtt_3_1_1(tmp_path: Path, simulator: type[Simulator]) -> None:
    sim = sdm120s(simulator, 1)
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b").start()
    sub = Subscriber(broker.port, "meters/gw1/#")
    config = site_config(
        tmp_path, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", sim_port=sim, meters=1, mqtt_extra=', protocol: "3.1.1"'
    )
    d = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        sub.wait_for(lambda: len(sub.json("/reading")) >= 2, 20, "readings over MQTT 3.1.1")
        assert d.term() == 0
        sub.wait_offline()  # the status the daemon publishes when it stops arrives over 3.1.1 too
    finally:
        d.finish()
        sub.close()
        broker.stop()
