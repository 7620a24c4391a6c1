"""MQTT session (the only paho-mqtt import): buffered rows out, acknowledgements back to the buffer.

Facts this is built on (docs/design-changes.md, "paho-mqtt"): ``is_published()`` is not proof of delivery (an
ACL-denied publish under MQTT 5 gets PUBACK 135 and still "is published"), so acks are tracked by
message id in ``on_publish`` and a failure reason code keeps the row; paho queues without bound
while disconnected, so the backlog stays in SQLite and paho only ever holds a bounded window.

Flow: rows come either fresh (just committed by the writer, handed over in memory) or from the
backlog (read back from SQLite by seq after a (re)connect). The window is filled mostly from the
backlog, oldest first, with a quarter reserved for fresh rows so a long backlog never starves
current readings. An acked row is deleted in the next batch delete; an unacked row stays and is
sent again after a reconnect (paho resends its own in-flight QoS 1 messages; we skip those).

paho runs inside the event loop (its documented external-loop mode: the socket is watched with
add_reader/add_writer, ``loop_misc`` every second), not in its own thread: measured on the
development machine, that doubles the messages per second paho can send (24,000 against 12,000
with ``loop_start``), because no message crosses threads. Only the blocking part, opening the
connection (DNS, TCP connect, TLS handshake), runs in a worker thread, so a dead uplink never
stalls polling.

Reconnects (docs/operations.md, "A fleet behind one broker"): a refused, timed-out or dropped
connection is tried again after a jittered delay of 0.5-1 × (1, 2, 4, 5, 5 ... s), so the first
buffered message reaches a broker that is back within about 5 s and a fleet of gateways does not
reconnect in lockstep; a broker that refuses our credentials, or a password file that cannot be
read, is tried every 30-60 s. Each distinct cause of a failed connect is logged once, with the
broker's address, and kept for health as ``last_connect_error``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import Mqtt
from collector.daemon import payloads
from collector.daemon.buffer import AsyncBuffer
from collector.daemon.records import Row
from collector.daemon.supervisor import Supervisor

log = logging.getLogger(__name__)

FRESH_SHARE = 4  #: one in this many window places goes to fresh rows while a backlog drains
BACKLOG_CHUNK = 1000
ACK_FLUSH_SECONDS = 0.25
RECONNECT_CAP = 5.0  #: seconds: the longest wait before trying a broker again after a refusal or timeout
AUTH_RETRY = 60.0  #: seconds: the wait after the broker refused our credentials (jittered down to half)
CONNACK_TIMEOUT = 10.0  #: seconds for the broker to answer CONNECT
REJECT_RETRY = 15.0  #: seconds before rows the broker refused are sent again (doubling to 10 min while refused)
REJECT_RETRY_CAP = 600.0


class SecretError(Exception):
    """The MQTT password cannot be read (the message never contains the password)."""


def read_password(cfg: Mqtt) -> str | None:
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"mqtt.password_file {cfg.password_file}: {exc.strerror}") from None
    return os.environ.get("MC_MQTT_PASSWORD")


@dataclass
class PublisherStats:
    published: int = 0
    acked: int = 0
    rejected: int = 0
    connects: int = 0
    disconnects: int = 0


class Publisher:
    def __init__(
        self,
        cfg: Mqtt,
        gateway: str,
        buffer: AsyncBuffer,
        topics: payloads.Topics,
        *,
        window: int = 100,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.buffer = buffer
        self.topics = topics
        self.window = window
        self.on_connect_hook = on_connect
        self.stats = PublisherStats()
        self.connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._wake = asyncio.Event()
        self._acks: collections.deque[tuple[int, bool, str]] = collections.deque()
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._inflight_seqs: set[int] = set()
        self._acked_pending: list[int] = []  # acked, delete not yet committed
        self._acked_set: set[int] = set()
        self._rejected: set[int] = set()
        self._rejected_logged: set[tuple[str, str]] = set()
        self._fresh: collections.deque[Row] = collections.deque()
        self._fresh_max = 10_000
        self._backlog: collections.deque[Row] = collections.deque()
        self._cursor = 0
        self._backlog_end = 0
        self._end_known = True  #: False after a rewind until the pump has read the buffer's last seq
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._first = True
        self._connected_event = asyncio.Event()
        self._session_over = asyncio.Event()
        self.last_connect_error = ""  #: why the last connect failed ("" once connected)
        self._auth_failed = False  #: the last failure was the broker refusing us: back off longer
        self._connack = False  #: the broker answered this connection's CONNECT
        self._rejected_at = 0.0
        self._reject_delay = REJECT_RETRY
        self._acks_failed = ""
        self._loop_thread = 0
        self._fd = -1

    # -- paho side (its own thread) ---------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
        client.will_set(self.topics.status, payloads.status("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(self.window)
        client.connect_timeout = 10.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn in the event loop's thread: now if we are in it, else soon (from the connect thread)."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._fd = fd
        self._in_loop(self._watch, fd)

    def _watch(self, fd: int) -> None:
        assert self._loop is not None and self._client is not None
        self._loop.add_reader(fd, self._client.loop_read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._in_loop(self._unwatch, fd)

    def _unwatch(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd
        if fd >= 0:
            self._in_loop(self._watch_write, fd)

    def _watch_write(self, fd: int) -> None:
        assert self._loop is not None and self._client is not None
        if fd == self._fd:
            self._loop.add_writer(fd, self._client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self._fd
        if fd >= 0:
            self._in_loop(self._unwatch_write, fd)

    def _unwatch_write(self, fd: int) -> None:
        assert self._loop is not None
        self._loop.remove_writer(fd)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected_cb(bool(rc.is_failure), str(rc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._disconnected_cb(str(rc))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._acks.append((mid, bool(rc.is_failure), str(rc)))
        self._wake.set()

    # -- event loop side ------------------------------------------------------------------------

    def _connected_cb(self, failed: bool, reason: str) -> None:
        self._connack = True
        if failed:
            self._auth_failed = _refused_credentials(reason)
            self._connect_failed(f"the broker refused the connection: {reason}")
            return
        self.connected = True
        self._auth_failed = False
        self._reject_delay = REJECT_RETRY
        self.stats.connects += 1
        self.last_connect_error = ""
        log.info("MQTT connected to %s:%d%s", self.cfg.host, self.cfg.port, " (TLS)" if self.cfg.tls else "")
        assert self._client is not None
        self._client.publish(self.topics.status, payloads.status("online"), qos=1, retain=True)
        if self.on_connect_hook is not None:
            self.on_connect_hook()
        self._rewind()
        self._connected_event.set()

    def _connect_failed(self, reason: str) -> None:
        """Logged once per distinct cause (a broker down for a week is one line, not 100,000)."""
        if reason != self.last_connect_error:
            log.warning(
                "MQTT cannot connect to %s (%s:%d): %s; retrying every %s",
                self.cfg.url,
                self.cfg.host,
                self.cfg.port,
                reason,
                "30-60 s" if self._auth_failed else f"few seconds (at most {RECONNECT_CAP:.0f} s)",
            )
            self.last_connect_error = reason

    def _disconnected_cb(self, reason: str) -> None:
        if not self.connected and not self._connack and not self._stopping:
            hint = (
                '; if it speaks MQTT 3.1.1 only (RabbitMQ before 3.13, amqtt), set mqtt.protocol: "3.1.1"'
                if self.cfg.protocol == "5"
                else ""
            )
            tls = "" if self.cfg.tls else "; a TLS port needs an mqtts:// url"
            self._connect_failed(f"the broker closed the connection before answering CONNECT ({reason}){hint}{tls}")
        if self.connected:
            self.stats.disconnects += 1
            if not self._stopping:
                log.warning("MQTT connection lost (%s); readings stay in the buffer; reconnecting", reason)
        self.connected = False
        self._connected_event.clear()
        self._fresh.clear()
        self._session_over.set()

    def _rewind(self) -> None:
        """Send everything stored again from the oldest row (after a connect, or to retry rejects)."""
        self._rejected_at = 0.0
        self._cursor = 0
        self._backlog.clear()
        self._fresh.clear()
        self._rejected.clear()
        self._end_known = False  # the pump asks the buffer (in the buffer's thread) before it sends
        self._wake.set()

    def offer(self, rows: list[Row]) -> None:
        """Rows just committed by the writer."""
        if not rows:
            return
        if not self.connected:
            return  # read back from the buffer after the next connect
        if len(self._fresh) + len(rows) > self._fresh_max:
            self._fresh.clear()
            self._backlog_end = rows[-1].seq  # the backlog reads them from SQLite instead
        else:
            self._fresh.extend(rows)
        self._wake.set()

    def publish_direct(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """A message that does not pass through the buffer (status, meta, health); only when connected."""
        if not self.connected or self._client is None:
            return False
        return self._client.publish(topic, payload, qos=qos, retain=retain).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Make the client and run the loops: under the daemon's supervisor, or as plain tasks."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = self._make_client()
        loops = {
            "mqtt-pump": self._pump,
            "mqtt-acks": self._flush_acks,
            "mqtt-connection": self._connection,
            "mqtt-misc": self._misc,
        }
        for name, loop in loops.items():
            if supervisor is not None:
                supervisor.start(name, loop)
            else:
                self._tasks.append(asyncio.create_task(loop(), name=name))

    def _open(self, first: bool) -> None:
        """Blocking: the password, DNS, TCP connect, TLS handshake, CONNECT sent. Runs in a worker thread."""
        assert self._client is not None
        if self.cfg.username is not None:
            # Read at every connect: a password file put right is used without a restart.
            self._client.username_pw_set(self.cfg.username, read_password(self.cfg))
        if first:
            props = None
            if self.cfg.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0
            self._client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=int(self.cfg.keepalive),
                clean_start=True if self.cfg.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
        else:
            self._client.reconnect()

    def _delay(self, failures: int) -> float:
        """Jittered: 0.5-1 × min(2^(n-1), 5) s; 30-60 s when the broker refused our credentials."""
        base = AUTH_RETRY if self._auth_failed else min(2.0 ** max(0, failures - 1), RECONNECT_CAP)
        return base * random.uniform(0.5, 1.0)

    async def _connection(self) -> None:
        """Open the session; when it ends (or cannot start), wait and open it again."""
        assert self._loop is not None
        failures = 0
        while not self._stopping:
            self._session_over.clear()
            self._connack = False
            try:
                await self._loop.run_in_executor(None, self._open, self._first)
                self._first = False
            except SecretError as exc:
                self._auth_failed = True
                self._connect_failed(str(exc))
                failures += 1
                await asyncio.sleep(self._delay(failures))
                continue
            except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
                self._first = False
                self._auth_failed = False
                self._connect_failed(_describe(exc))
                failures += 1
                await asyncio.sleep(self._delay(failures))
                continue
            try:
                await asyncio.wait_for(self._answered(), CONNACK_TIMEOUT)
            except TimeoutError:
                self._connect_failed(
                    f"no answer to CONNECT within {CONNACK_TIMEOUT:.0f} s (is this an MQTT broker's port?)"
                )
                self._drop_connection()
            await self._session_over.wait()
            if self.stats.connects and self.last_connect_error == "":
                failures = 0  # the session had been up: start the backoff again
            failures += 1
            if not self._stopping:
                await asyncio.sleep(self._delay(failures))

    async def _answered(self) -> None:
        while not self._connack and not self._session_over.is_set():
            await asyncio.sleep(0.05)

    def _drop_connection(self) -> None:
        """Close a connection that never got going; paho reports it as a disconnect (already logged
        as what it is: not as a broker that hung up)."""
        self._connack = True
        if self._client is not None:
            sock = self._client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                self._client.loop_read()
        if not self._session_over.is_set():
            self._session_over.set()

    async def _misc(self) -> None:
        """paho's housekeeping: keepalive pings, retries, and noticing a dead link."""
        while True:
            await asyncio.sleep(1.0)
            if self._client is not None and self._fd >= 0:
                self._client.loop_misc()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _take_acks(self) -> None:
        while self._acks:
            mid, failed, reason = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # status, meta, health
            self._inflight_seqs.discard(seq)
            if failed:
                self.stats.rejected += 1
                self._rejected.add(seq)
                if not self._rejected_at:
                    self._rejected_at = time.monotonic()
                key = (reason, "")
                if key not in self._rejected_logged:
                    self._rejected_logged.add(key)
                    log.error(
                        "MQTT broker refused seq %d: %s (the row stays in the buffer and is sent again "
                        "after %.0f s, then less often; check the broker's ACL for this gateway)",
                        seq,
                        reason,
                        self._reject_delay,
                    )
            else:
                self.stats.acked += 1
                self._acked_pending.append(seq)
                self._acked_set.add(seq)

    def _skip(self, row: Row) -> bool:
        s = row.seq
        return s in self._inflight_seqs or s in self._acked_set or s in self._rejected

    async def _next_backlog(self) -> Row | None:
        while True:
            while self._backlog:
                row = self._backlog.popleft()
                if row.seq > self._backlog_end:
                    self._backlog.clear()
                    return None
                if not self._skip(row):
                    return row
            if self._cursor >= self._backlog_end:
                return None
            rows = await self.buffer.fetch(self._cursor, BACKLOG_CHUNK)
            if not rows:
                self._cursor = self._backlog_end
                return None
            self._cursor = rows[-1].seq
            self._backlog.extend(rows)

    def _next_fresh(self) -> Row | None:
        while self._fresh:
            row = self._fresh.popleft()
            if row.seq > self._backlog_end and not self._skip(row):
                return row
        return None

    async def _pump(self) -> None:
        turn = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._take_acks()
            while self.connected and len(self._inflight) < self.window:
                if not self._end_known:
                    self._end_known = True
                    self._backlog_end = max(self._backlog_end, await self.buffer.last_seq())
                turn += 1
                row = self._next_fresh() if turn % FRESH_SHARE == 0 else None
                if row is None:
                    row = await self._next_backlog()
                if row is None:
                    row = self._next_fresh()
                if row is None:
                    break
                self._take_acks()
                if not self.connected or self._client is None:
                    break
                topic, payload = payloads.message(row, self.gateway, self.topics)
                info = self._client.publish(topic, payload, qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    # paho queued it while the link went down; paho resends it after reconnecting.
                    pass
                self._inflight[info.mid] = row.seq
                self._inflight_seqs.add(row.seq)
                self.stats.published += 1

    async def _flush_acks(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_SECONDS)
            await self.flush_acks()
            if self._rejected_at and time.monotonic() - self._rejected_at > self._reject_delay and self.connected:
                # An ACL fixed on the broker is seen without a reconnect; while it stays, less often.
                self._reject_delay = min(self._reject_delay * 2, REJECT_RETRY_CAP)
                self._rewind()

    async def flush_acks(self) -> None:
        """Delete acknowledged rows. A delete that fails (a full disk) is tried again with the next
        flush: the rows stay marked as acknowledged, so they are neither lost nor sent again."""
        if not self._acked_pending:
            return
        seqs, self._acked_pending = self._acked_pending, []
        try:
            await self.buffer.delete(seqs)
        except (sqlite3.Error, OSError) as exc:
            self._acked_pending = seqs + self._acked_pending
            if str(exc) != self._acks_failed:
                self._acks_failed = str(exc)
                log.error(
                    "cannot delete %d acknowledged row(s) from the buffer: %s; trying again (they are not sent again)",
                    len(seqs),
                    exc,
                )
            return
        if self._acks_failed:
            log.warning("acknowledged rows are deleted from the buffer again")
            self._acks_failed = ""
        self._acked_set.difference_update(seqs)

    async def drain(self, timeout: float) -> None:
        """Give in-flight and buffered rows up to ``timeout`` seconds to be acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.connected:
            self._wake.set()
            if not self._inflight and not self._fresh and self._end_known and self._cursor >= self._backlog_end:
                break
            await asyncio.sleep(0.05)
        self._take_acks()
        await self.flush_acks()

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._take_acks()
        await self.flush_acks()
        client = self._client
        if client is not None and self.connected:
            info = client.publish(self.topics.status, payloads.status("offline"), qos=1, retain=True)
            deadline = asyncio.get_running_loop().time() + 2.0
            while not info.is_published() and self.connected and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            client.disconnect()
            for _ in range(50):  # let the loop write DISCONNECT and see the socket close
                if self._fd < 0:
                    break
                await asyncio.sleep(0.02)
            # Acks that came while "offline" was on its way: their rows are delivered, delete them.
            self._take_acks()
            await self.flush_acks()
        if self._fd >= 0:
            self._unwatch(self._fd)
            self._fd = -1
        self.connected = False


def _refused_credentials(reason: str) -> bool:
    """CONNACK reason codes that a retry will not change: 3.1.1 rc 4/5, MQTT 5 0x86, 0x87, 0x8C."""
    words = reason.lower()
    return any(w in words for w in ("not authorized", "bad user name", "authentication", "banned"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        hint = "; is this a TLS port? an mqtt:// url needs a plain one" if "WRONG_VERSION" in str(exc) else ""
        return f"TLS handshake failed ({exc.reason or exc}){hint}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the broker"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__


class Subscription:
    """The platform's side, for the demo: subscribe at QoS 1 and hand each message to ``sink`` (from
    paho's own thread). Kept here so that paho-mqtt is imported by this module alone."""

    def __init__(self, host: str, port: int, topic: str, sink: Callable[[tuple[str, bytes]], None]) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"platform-{port}", protocol=mqtt.MQTTv311)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_message = lambda cl, u, m: sink((m.topic, bytes(m.payload)))
        c.connect(host, port)
        c.loop_start()
        self.client = c

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
