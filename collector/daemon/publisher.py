"""The MQTT side (the only paho-mqtt import): a session to the broker, and the ``Publisher`` that
joins it to the delivery window (``delivery.py``: which buffered rows are on their way).

Facts this is built on (docs/design-changes.md, "paho-mqtt"): ``is_published()`` is not proof of
delivery (an ACL-denied publish under MQTT 5 gets PUBACK 135 and still "is published"), so every
PUBACK is handed on with its message id and reason code (``SessionEvents.on_ack``); paho queues
without bound while disconnected, so it is given at most the window's ``max_inflight`` messages.

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
import contextlib
import logging
import os
import random
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector.config import Mqtt
from collector.daemon import payloads
from collector.daemon.buffer import AsyncBuffer
from collector.daemon.delivery import DeliveryWindow, Loops
from collector.daemon.records import Row
from collector.daemon.supervisor import Supervisor

log = logging.getLogger(__name__)

RECONNECT_CAP = 5.0  #: seconds: the longest wait before trying a broker again after a refusal or timeout
AUTH_RETRY = 60.0  #: seconds: the wait after the broker refused our credentials (jittered down to half)
CONNACK_TIMEOUT = 10.0  #: seconds for the broker to answer CONNECT


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


class SessionEvents(Protocol):
    """What the session tells its user, from paho's callbacks, in the event loop's thread (paho
    reads and writes its socket there). No paho type crosses."""

    def on_connected(self) -> None: ...

    def on_disconnected(self) -> None: ...

    def on_ack(self, mid: int, failed: bool, reason: str) -> None:
        """A PUBACK for message ``mid``; ``failed`` with the broker's reason code: not delivered."""
        ...


@dataclass
class SessionStats:
    connects: int = 0
    disconnects: int = 0


@dataclass
class PublisherStats:
    """Both parts' counters, as the health payload shows them."""

    published: int = 0
    acked: int = 0
    rejected: int = 0
    connects: int = 0
    disconnects: int = 0


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message from a subscription, without paho's types. The MQTT 5 properties are None when the
    sender set none (and always under 3.1.1)."""

    topic: str
    payload: bytes
    retained: bool  #: a retained message the broker handed over on subscribing, not one just sent
    response_topic: str | None = None
    correlation_data: bytes | None = None


class _SocketWatch:
    """paho's external-loop mode: the event loop watches paho's socket and calls ``loop_read`` and
    ``loop_write``. paho reports its socket from whichever thread uses it (the connect worker opens
    it), so each change is carried over to the event loop's thread."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.thread = threading.get_ident()
        self.fd = -1  #: paho's socket, -1 when there is none
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._write_wanted
        client.on_socket_unregister_write = self._write_done

    def _in_loop(self, fn: Callable[[int], None], fd: int) -> None:
        """Run fn in the event loop's thread: now if we are in it, else soon (from the connect thread)."""
        if threading.get_ident() == self.thread:
            fn(fd)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, fd)

    def _opened(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()
        self.fd = fd
        self._in_loop(self._watch, fd)

    def _watch(self, fd: int) -> None:
        self.loop.add_reader(fd, self.client.loop_read)

    def _closed(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            self._in_loop(self._unwatch, fd)

    def _unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)

    def _write_wanted(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self.fd
        if fd >= 0:
            self._in_loop(self._watch_write, fd)

    def _watch_write(self, fd: int) -> None:
        if fd == self.fd:
            self.loop.add_writer(fd, self.client.loop_write)

    def _write_done(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = self.fd
        if fd >= 0:
            self._in_loop(self._unwatch_write, fd)

    def _unwatch_write(self, fd: int) -> None:
        self.loop.remove_writer(fd)

    def release(self) -> None:
        """Stop watching a socket paho did not close (on stop)."""
        if self.fd >= 0:
            self._unwatch(self.fd)
            self.fd = -1


class MqttSession:
    """One client's connection to the broker, kept up: connect in a worker thread, CONNACK within
    CONNACK_TIMEOUT, reconnect after a jittered backoff, an "online" status (retained) on connect and
    "offline" on stop or as the will. Which messages to send is the user's business: it hears of
    connects, disconnects and acks through ``SessionEvents``."""

    def __init__(self, cfg: Mqtt, status_topic: str, events: SessionEvents, *, max_inflight: int = 100) -> None:
        self.cfg = cfg
        self.status_topic = status_topic
        self.events = events
        self.max_inflight = max_inflight  #: paho holds no more unacknowledged QoS 1 messages than this
        self.stats = SessionStats()
        self.connected = False
        self.stopping = False  #: set on stop: no reconnect, and a disconnect is not a lost connection
        self.last_connect_error = ""  #: why the last connect failed ("" once connected)
        self._client: mqtt.Client | None = None
        self._watch: _SocketWatch | None = None
        self._first = True  #: no connect tried yet: the next is a clean start, not a reconnect
        self._connack = False  #: the broker answered this connection's CONNECT
        self._auth_failed = False  #: the last failure was the broker refusing us: back off longer
        self._connected_event = asyncio.Event()
        self._session_over = asyncio.Event()
        #: topic filter -> what gets its messages; subscribed (QoS 1) on every connect, since a clean
        #: start loses the subscriptions of the session before
        self.receive_maximum: int | None = None  #: from the last CONNACK (MQTT 5), None: no limit said
        self.subscriptions: dict[str, Callable[[Incoming], None]] = {}
        self._subscribing: dict[int, str] = {}  #: SUBSCRIBE message id -> topic filter, until its SUBACK
        self._refused_subscriptions: set[str] = set()  #: "filter: reason" already logged

    def attach(self) -> None:
        """Make the client, its socket watched by the running event loop."""
        self._client = self._make_client()
        self._watch = _SocketWatch(self._client, asyncio.get_running_loop())

    def loops(self) -> Loops:
        """What runs for as long as the session does, by task name."""
        return {"mqtt-connection": self.keep_connected, "mqtt-misc": self.misc}

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
        client.will_set(self.status_topic, payloads.status("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.connect_timeout = 10.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # -- paho's callbacks -----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        #: MQTT 5: the most unacknowledged QoS 1 messages the broker takes at once (stock Mosquitto: 20)
        self.receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._connected_cb(bool(rc.is_failure), str(rc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._disconnected_cb(str(rc))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        # str(rc) looks the name up in paho's tables, the slowest part of an ack: not for plain success
        self.events.on_ack(mid, bool(rc.is_failure), "Success" if rc.value == 0 else str(rc))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties
        try:
            incoming = Incoming(
                msg.topic,
                bytes(msg.payload),
                bool(msg.retain),
                getattr(props, "ResponseTopic", None),
                getattr(props, "CorrelationData", None),
            )
        except UnicodeDecodeError:
            return  # a topic that is not UTF-8: no filter of ours matches it
        for topic_filter, handler in self.subscriptions.items():
            if mqtt.topic_matches_sub(topic_filter, incoming.topic):
                try:
                    handler(incoming)
                except Exception:  # a bug in the handler must not break paho's read of the socket
                    log.exception("handling an MQTT message on %s failed", incoming.topic)
                return

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[Any], props: Any) -> None:
        topic_filter = self._subscribing.pop(mid, "?")
        for rc in rcs:
            refused = f"{topic_filter}: {rc}"
            if rc.is_failure and refused not in self._refused_subscriptions:
                self._refused_subscriptions.add(refused)
                log.warning("MQTT: the broker refused the subscription to %s (an ACL?)", refused)

    def _subscribe(self) -> None:
        """Subscribe to every filter at QoS 1; under MQTT 5 with No Local (never our own messages)."""
        assert self._client is not None
        for topic_filter in self.subscriptions:
            if self.cfg.protocol == "5":
                _, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1, noLocal=True))
            else:
                _, mid = self._client.subscribe(topic_filter, qos=1)
            if mid is not None:
                self._subscribing[mid] = topic_filter

    def _connected_cb(self, failed: bool, reason: str) -> None:
        self._connack = True
        if failed:
            self._auth_failed = _refused_credentials(reason)
            self._connect_failed(f"the broker refused the connection: {reason}")
            return
        self.connected = True
        self._auth_failed = False
        self.stats.connects += 1
        self.last_connect_error = ""
        log.info("MQTT connected to %s:%d%s", self.cfg.host, self.cfg.port, " (TLS)" if self.cfg.tls else "")
        assert self._client is not None
        self._client.publish(self.status_topic, payloads.status("online"), qos=1, retain=True)
        self._subscribe()
        self.events.on_connected()
        self._connected_event.set()

    def _disconnected_cb(self, reason: str) -> None:
        if not self.connected and not self._connack and not self.stopping:
            self._connect_failed(self._hung_up(reason))
        if self.connected:
            self.stats.disconnects += 1
            if not self.stopping:
                log.warning("MQTT connection lost (%s); readings stay in the buffer; reconnecting", reason)
        self.connected = False
        self._connected_event.clear()
        self.events.on_disconnected()
        self._session_over.set()

    def _hung_up(self, reason: str) -> str:
        """The broker closed before CONNACK: say what usually causes it."""
        hint = (
            '; if it speaks MQTT 3.1.1 only (RabbitMQ before 3.13, amqtt), set mqtt.protocol: "3.1.1"'
            if self.cfg.protocol == "5"
            else ""
        )
        tls = "" if self.cfg.tls else "; a TLS port needs an mqtts:// url"
        return f"the broker closed the connection before answering CONNECT ({reason}){hint}{tls}"

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

    # -- sending --------------------------------------------------------------------------------

    def send(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the message id its ack will carry. A message paho could not
        write (the link went down just now) is queued by paho and resent after the reconnect."""
        assert self._client is not None
        return self._client.publish(topic, payload, qos=1).mid

    def publish_direct(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool:
        """A message that does not pass through the buffer (status, meta, health, answers); only when
        connected. ``correlation_data`` and ``content_type`` are MQTT 5 properties (left out under
        3.1.1); a ``content_type`` also marks the payload as UTF-8 (Payload Format Indicator 1)."""
        if not self.connected or self._client is None:
            return False
        props = None
        if self.cfg.protocol == "5" and (correlation_data is not None or content_type is not None):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation_data is not None:
                props.CorrelationData = correlation_data
            if content_type is not None:
                props.ContentType = content_type
                props.PayloadFormatIndicator = 1
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- connecting -----------------------------------------------------------------------------

    async def keep_connected(self) -> None:
        """Open the session; when it ends (or cannot start), wait and open it again."""
        failures = 0
        while not self.stopping:
            if await self._open():
                await self._await_connack()
                await self._session_over.wait()
                if self.stats.connects and self.last_connect_error == "":
                    failures = 0  # the session had been up: start the backoff again
            failures += 1
            if not self.stopping:
                await asyncio.sleep(self._delay(failures))

    async def _open(self) -> bool:
        """Start a connection: False when it could not even send CONNECT (the cause is logged)."""
        self._session_over.clear()
        self._connack = False
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._connect_blocking, self._first)
        except SecretError as exc:
            self._auth_failed = True
            self._connect_failed(str(exc))
            return False
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            self._first = False
            self._auth_failed = False
            self._connect_failed(_describe(exc))
            return False
        self._first = False
        return True

    def _connect_blocking(self, first: bool) -> None:
        """Blocking: the password, DNS, TCP connect, TLS handshake, CONNECT sent. Runs in a worker thread."""
        assert self._client is not None
        if self.cfg.username is not None:
            # Read at every connect: a password file put right is used without a restart.
            self._client.username_pw_set(self.cfg.username, read_password(self.cfg))
        if not first:
            self._client.reconnect()
            return
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

    def _delay(self, failures: int) -> float:
        """Jittered: 0.5-1 × min(2^(n-1), 5) s; 30-60 s when the broker refused our credentials."""
        base = AUTH_RETRY if self._auth_failed else min(2.0 ** max(0, failures - 1), RECONNECT_CAP)
        return base * random.uniform(0.5, 1.0)

    async def _await_connack(self) -> None:
        try:
            await asyncio.wait_for(self._answered(), CONNACK_TIMEOUT)
        except TimeoutError:
            self._connect_failed(
                f"no answer to CONNECT within {CONNACK_TIMEOUT:.0f} s (is this an MQTT broker's port?)"
            )
            self._drop_connection()

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

    async def misc(self) -> None:
        """paho's housekeeping: keepalive pings, retries, and noticing a dead link."""
        while True:
            await asyncio.sleep(1.0)
            if self._watch is not None and self._watch.fd >= 0:
                self._watch.client.loop_misc()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # -- stopping -------------------------------------------------------------------------------

    async def disconnect(self) -> bool:
        """Say "offline" (up to 2 s for its PUBACK), then DISCONNECT; False when not connected."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(self.status_topic, payloads.status("offline"), qos=1, retain=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while not info.is_published() and self.connected and loop.time() < deadline:
            await asyncio.sleep(0.02)
        client.disconnect()
        for _ in range(50):  # let the loop write DISCONNECT and see the socket close
            if self._watch is None or self._watch.fd < 0:
                break
            await asyncio.sleep(0.02)
        return True

    def release(self) -> None:
        """The end: the socket is no longer watched, whatever state paho is in."""
        if self._watch is not None:
            self._watch.release()
        self.connected = False


class Publisher:
    """The daemon's one MQTT interface: the session (paho) and the delivery window (the buffer's
    rows), joined. It is the session's ``SessionEvents`` and hands them on to the window."""

    configured = True  #: the config has mqtt (NoPublisher: it has not)

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
        self.session = MqttSession(cfg, topics.status, self, max_inflight=window)
        self.delivery = DeliveryWindow(buffer, self.session, gateway, topics, size=window)
        self.on_connect_hook = on_connect  #: called on every connect, after "online", before the rows
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stats(self) -> PublisherStats:
        """A snapshot of both parts' counters."""
        return PublisherStats(**asdict(self.delivery.stats), **asdict(self.session.stats))

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def inflight(self) -> int:
        return self.delivery.inflight

    @property
    def last_connect_error(self) -> str:
        return self.session.last_connect_error

    def on_connected(self) -> None:
        if self.on_connect_hook is not None:
            self.on_connect_hook()
        self.delivery.peer_limit(self.session.receive_maximum)
        self.delivery.on_connected()

    def on_disconnected(self) -> None:
        self.delivery.on_disconnected()

    def on_ack(self, mid: int, failed: bool, reason: str) -> None:
        self.delivery.on_ack(mid, failed, reason)

    def offer(self, rows: list[Row]) -> None:
        """Rows just committed by the writer."""
        self.delivery.offer(rows)

    def publish_direct(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool:
        """A message that does not pass through the buffer (status, meta, health, answers); only when connected."""
        return self.session.publish_direct(
            topic, payload, qos=qos, retain=retain, correlation_data=correlation_data, content_type=content_type
        )

    def subscribe(self, topic_filter: str, handler: Callable[[Incoming], None]) -> None:
        """Have ``handler`` called (in the event loop, from paho's read of the socket: it must not
        block) with every message on ``topic_filter``, subscribed at QoS 1 on every connect."""
        self.session.subscriptions[topic_filter] = handler

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Make the client and run the loops: under the daemon's supervisor, or as plain tasks."""
        self.session.attach()
        for name, loop in {**self.delivery.loops(), **self.session.loops()}.items():
            if supervisor is not None:
                supervisor.start(name, loop)
            else:
                self._tasks.append(asyncio.create_task(loop(), name=name))

    async def wait_connected(self, timeout: float) -> bool:
        return await self.session.wait_connected(timeout)

    async def flush_acks(self) -> None:
        """Delete acknowledged rows (a failed delete is tried again with the next flush)."""
        await self.delivery.flush_acks()

    async def around_retention(self, enforce: Callable[[set[int]], Awaitable[list[Row]]]) -> list[Row]:
        """A retention pass that drops nothing in flight or acknowledged (delivery.py)."""
        return await self.delivery.around_retention(enforce)

    async def drain(self, timeout: float) -> None:
        """Give in-flight and buffered rows up to ``timeout`` seconds to be acknowledged."""
        await self.delivery.drain(timeout)

    async def stop(self) -> None:
        """Stop the loops, delete what was acknowledged, say "offline" and disconnect."""
        self.session.stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.delivery.settle()
        if await self.session.disconnect():
            # Acks that came while "offline" was on its way: their rows are delivered, delete them.
            await self.delivery.settle()
        self.session.release()


class NoPublisher:
    """The Publisher's face when the config has no mqtt section (the data centre is the only
    northbound): nothing is sent, nothing connects, nothing is in flight. One small object instead
    of an Optional at every use."""

    configured = False
    connected = False
    inflight = 0
    last_connect_error = ""

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats()

    def offer(self, rows: list[Row]) -> None:
        pass

    def publish_direct(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool:
        return False

    def subscribe(self, topic_filter: str, handler: Callable[[Incoming], None]) -> None:
        pass

    async def start(self, supervisor: Supervisor | None = None) -> None:
        pass

    async def wait_connected(self, timeout: float) -> bool:
        return False

    async def flush_acks(self) -> None:
        pass

    async def around_retention(self, enforce: Callable[[set[int]], Awaitable[list[Row]]]) -> list[Row]:
        return await enforce(set())

    async def drain(self, timeout: float) -> None:
        pass

    async def stop(self) -> None:
        pass


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
