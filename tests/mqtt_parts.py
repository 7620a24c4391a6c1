"""Real MQTT parts for tests: a Mosquitto of our own on a free port, a platform subscriber, and a
TCP proxy that can cut the daemon's connection to the broker."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, need, wait_until


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    openssl = shutil.which("openssl") or need("openssl")
    f = folder

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=f)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    (f / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extra,
        )
    run("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.pem", "-days", "2", "-subj", "/CN=other")
    return {n: f / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other-ca.pem")}


class Mosquitto:
    """Debian's mosquitto with a config of the test's own, on a free loopback port."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: dict[str, Path] | None = None,
        require_cert: bool = False,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else need("mosquitto")
        )
        self.folder = folder
        self.port = free_port()
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "max_queued_messages 100000",
            f"log_dest file {folder / 'mosquitto.log'}",
            *extra,
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto", who cannot read the test's files
        if tls:
            lines += [f"cafile {tls['ca.pem']}", f"certfile {tls['server.pem']}", f"keyfile {tls['server.key']}"]
            if require_cert:
                lines.append("require_certificate true")
        if users:
            pw = folder / "passwd"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            passwd = shutil.which("mosquitto_passwd") or need("mosquitto_passwd")
            subprocess.run([passwd, "-U", str(pw)], check=True, capture_output=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """The platform's side: subscribes at QoS 1 and keeps every message it receives."""

    def __init__(
        self,
        port: int,
        topic: str = "#",
        *,
        tls_ca: Path | None = None,
        tls_cert: tuple[Path, Path] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"platform-{port}", protocol=mqtt.MQTTv5)
        if tls_ca:
            cert, key = tls_cert if tls_cert else (None, None)
            c.tls_set(ca_certs=str(tls_ca), certfile=str(cert) if cert else None, keyfile=str(key) if key else None)
        if auth:
            c.username_pw_set(*auth)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.ready.set()
        c.on_message = self._on_message
        c.connect("localhost" if tls_ca else "127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not self.ready.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def json(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def seqs(self) -> list[int]:
        with self.lock:
            out = []
            for t, p, _ in self.messages:
                if t.endswith(("/reading", "/events", "/interval")):
                    out.append(json.loads(p)["seq"])
            return out

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what)

    def wait_offline(self, timeout: float = 10) -> None:
        """Wait for the daemon's last word, the "offline" status it publishes when it stops: what it
        sent before has arrived too (one session, delivered in order)."""
        self.wait_for(
            lambda: (s := self.json("/status")) and s[-1]["state"] == "offline", timeout, 'the "offline" status'
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Proxy:
    """A TCP relay between the daemon and the broker whose connection the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.listen()

    def listen(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self.server = srv
        self.thread = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        self.thread.start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones (the uplink is gone)."""
        if self.server is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the kernel
            # socket listening until that accept() returns, and one more connection would get through.
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
            self.server = None
            if self.thread is not None:
                self.thread.join(5)
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.conns.clear()

    def restore(self) -> None:
        self.listen()

    def close(self) -> None:
        self.cut()
