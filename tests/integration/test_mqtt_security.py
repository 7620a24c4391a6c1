"""TLS with a CA and certificates generated here, username/password from a file, an ACL that denies
a topic: each with its own Mosquitto."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Simulator, free_port, wait_until
from tests.integration.daemon_parts import DaemonProcess, buffered, site_config, stored
from tests.mqtt_parts import Mosquitto, Subscriber, make_certs

SECRET = "s3cret-Pa55-for-gw1"


def run_until(
    sub: Subscriber, daemon: DaemonProcess, predicate: Callable[[], object], timeout: float, what: str
) -> None:
    try:
        sub.wait_for(predicate, timeout, what)
    finally:
        if daemon.proc.poll() is None:
            daemon.term()
        sub.close()


@pytest.fixture
def sim_port(simulator: type[Simulator]) -> int:
    port = free_port()
    simulator("--model", "eastron-sdm120", "--tcp", f"127.0.0.1:{port}", "--ids", "1-2")
    return port


def test_tls_with_verified_server_and_client_certificates(tmp_path: Path, sim_port: int) -> None:
    (tmp_path / "b").mkdir()
    certs = make_certs(tmp_path / "b")
    broker = Mosquitto(tmp_path / "b", tls=certs, require_cert=True).start()
    try:
        sub = Subscriber(
            broker.port, "meters/gw1/#", tls_ca=certs["ca.pem"], tls_cert=(certs["client.pem"], certs["client.key"])
        )
        extra = f", ca_file: {certs['ca.pem']}, cert_file: {certs['client.pem']}, key_file: {certs['client.key']}"
        config = site_config(
            tmp_path, mqtt_url=f"mqtts://localhost:{broker.port}", sim_port=sim_port, meters=2, mqtt_extra=extra
        )
        d = DaemonProcess(config, tmp_path / "daemon.log")
        run_until(sub, d, lambda: len(sub.json("/reading")) >= 4, 20, "readings over TLS")
        assert "(TLS)" in d.log()
    finally:
        broker.stop()


def test_tls_refuses_a_server_it_cannot_verify(tmp_path: Path, sim_port: int) -> None:
    (tmp_path / "b").mkdir()
    certs = make_certs(tmp_path / "b")
    broker = Mosquitto(tmp_path / "b", tls=certs).start()
    try:
        # The daemon trusts another CA: certificate verification must refuse the broker.
        config = site_config(
            tmp_path,
            mqtt_url=f"mqtts://localhost:{broker.port}",
            sim_port=sim_port,
            meters=1,
            mqtt_extra=f", ca_file: {certs['other-ca.pem']}",
        )
        d = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            # Refused, said so, and the readings polled meanwhile are kept for later, not lost.
            wait_until(lambda: "MQTT cannot connect" in d.log(), 20, '"MQTT cannot connect" in the log')
            wait_until(lambda: len(buffered(tmp_path / "buffer.db")) >= 3, 20, "3 readings in the buffer")
            assert d.term() == 0
        finally:
            d.finish()
        log = d.log()
        assert "MQTT connected" not in log
        remaining, integrity = stored(tmp_path / "buffer.db")
        assert len(remaining) >= 3 and integrity == "ok"
    finally:
        broker.stop()


def test_password_from_a_file_never_reaches_the_log(tmp_path: Path, sim_port: int) -> None:
    (tmp_path / "b").mkdir()
    broker = Mosquitto(tmp_path / "b", users={"gw1": SECRET, "platform": "p"}).start()
    try:
        secret = tmp_path / "mqtt.secret"
        secret.write_text(SECRET + "\n")
        sub = Subscriber(broker.port, "meters/gw1/#", auth=("platform", "p"))
        config = site_config(
            tmp_path,
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
            sim_port=sim_port,
            meters=1,
            mqtt_extra=f", username: gw1, password_file: {secret}",
        )
        d = DaemonProcess(config, tmp_path / "daemon.log")
        run_until(sub, d, lambda: len(sub.json("/reading")) >= 2, 20, "readings with a password")
        # A wrong password from the environment: refused, said so, secret not logged.
        config2 = site_config(
            tmp_path,
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
            sim_port=sim_port,
            meters=1,
            mqtt_extra=", username: gw1",
        )
        env = {**os.environ, "MC_MQTT_PASSWORD": "wrong-" + SECRET}
        d2 = DaemonProcess(config2, tmp_path / "daemon2.log", env=env)
        try:
            wait_until(lambda: "MQTT cannot connect" in d2.log(), 20, '"MQTT cannot connect" in the log')
            assert d2.term() == 0
        finally:
            d2.finish()
        log2 = d2.log()
        assert "MQTT cannot connect" in log2 and ("authori" in log2.lower() or "password" in log2.lower())
        for text in (d.log(), log2):
            assert SECRET not in text
    finally:
        broker.stop()


def test_an_acl_denied_publish_loses_nothing(tmp_path: Path, sim_port: int) -> None:
    (tmp_path / "b").mkdir()
    acl = "user gw1\ntopic readwrite meters/gw1/#\ntopic deny meters/gw1/meters/secret/#\nuser platform\ntopic read #\n"
    broker = Mosquitto(tmp_path / "b", users={"gw1": SECRET, "platform": "p"}, acl=acl).start()
    try:
        secret = tmp_path / "mqtt.secret"
        secret.write_text(SECRET)
        sub = Subscriber(broker.port, "meters/gw1/#", auth=("platform", "p"))
        config = site_config(
            tmp_path,
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
            sim_port=sim_port,
            meter_names=["open", "secret"],
            mqtt_extra=f", username: gw1, password_file: {secret}",
        )
        d = DaemonProcess(config, tmp_path / "daemon.log")
        run_until(
            sub, d, lambda: any(h["mqtt"]["rejected"] >= 2 for h in sub.json("/health")), 20, "rejected publishes"
        )
        readings = sub.json("/reading")
        assert readings and all(r["meter"] == "open" for r in readings)
        remaining, integrity = stored(tmp_path / "buffer.db")
        # Every reading of the denied meter is still in the buffer: refused is not delivered.
        assert len(remaining) >= 2 and integrity == "ok"
        assert "broker refused seq" in d.log()
    finally:
        broker.stop()
