"""Read-only commands from a platform over MQTT 5 request/response (docs/platform-contract.md,
"Commands"): a request on ``{root}/cmd/{command}``, answered by ``Control.handle`` on the request's
Response Topic with its Correlation Data. The one command table is ``control.py``; this module is
the MQTT glue: which requests are answered, how often, and where.

- Who may send a command is the broker's ACL on ``{root}/cmd/#``, not this module.
- An answer goes only to a Response Topic under ``{root}/reply/``: the gateway's MQTT user then
  needs write access to its own root only, and a request cannot make the gateway publish on a
  topic the platform reads as data (``{root}/meters/.../reading``), on another gateway's ``cmd/``,
  or on its own ``cmd/`` (a loop). A request that cannot be answered (no Response Topic, one
  outside ``{root}/reply/``, a retained request) is counted and logged once per cause.
- Limits, so that a flood never starves the buses or the readings' publisher: a token bucket for
  every command (``BURST`` at once, then one per ``1 / RATE`` s; a reload costs ``RELOAD_COST``),
  at most one read of a meter at a time, and the bus workers' own bound on waiting reads
  (``bus.ASKS_WAITING``). Over a limit the answer is a refusal "rate limited, retry after N s";
  such refusals are themselves limited (``REFUSALS_BURST``, ``REFUSALS_RATE`` per s), beyond that
  a request is dropped unanswered and counted. The bucket is the gateway's, kept across reloads:
  a reload rebuilds the daemon, and must not hand its asker a fresh bucket.
- Commands run as tasks in the event loop (a read takes up to seconds; paho's callback returns at
  once); ``stop`` cancels those still running.
- MQTT 3.1.1 has no Response Topic: the daemon does not subscribe then, and says so once at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from collector.daemon.control import MAX_REQUEST
from collector.daemon.payloads import Topics, dumps
from collector.daemon.publisher import Incoming

log = logging.getLogger(__name__)

BURST = 10.0  #: commands answered at once after a quiet spell
RATE = 0.5  #: commands per second, sustained (one per 2 s)
RELOAD_COST = 5.0  #: tokens a reload takes (it restarts the pipeline): sustained, one per 10 s
REFUSALS_BURST = 10.0  #: "rate limited" answers at once; beyond them (and REFUSALS_RATE) a request is dropped
REFUSALS_RATE = 5.0  #: "rate limited" answers per second, sustained
READ_RETRY = 1  #: seconds a "read of this meter still running" refusal asks the platform to wait
CONTENT_TYPE = "application/json"
LIMITS = f"at most {BURST:.0f} commands at once, then one every {1 / RATE:.0f} s; a reload counts {RELOAD_COST:.0f}"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``clock`` is monotonic seconds."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.tokens = burst
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self, cost: float = 1.0) -> float:
        """0 when ``cost`` tokens were taken; else the seconds until they will be there (none taken)."""
        self._refill()
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


#: root topic -> its command bucket, for the life of the process (a reload must not reset it)
_BUCKETS: dict[str, TokenBucket] = {}


class Commands(Protocol):
    """The command table (control.Control)."""

    async def handle(self, command: str, body: dict[str, Any]) -> dict[str, Any]: ...


class Link(Protocol):
    """The MQTT side (publisher.Publisher)."""

    def subscribe(self, topic_filter: str, handler: Callable[[Incoming], None]) -> None: ...

    def publish_direct(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation_data: bytes | None = None,
        content_type: str | None = None,
    ) -> bool: ...


@dataclass
class CommandStats:
    """Counters, in health as ``commands``."""

    received: int = 0  #: requests on {root}/cmd/+
    answered: int = 0  #: answers handed to MQTT (ok or refused)
    refused: int = 0  #: of those, refusals (bad request, not a read-only command, rate limited ...)
    rate_limited: int = 0  #: requests over a limit (answered or dropped)
    unanswerable: int = 0  #: no usable Response Topic, or retained: not answered
    dropped: int = 0  #: over the limit while "rate limited" answers were over theirs: not answered


class RemoteCommands:
    """Subscribes to ``{root}/cmd/+`` (MQTT 5 only) and answers each request."""

    def __init__(self, commands: Commands, link: Link, topics: Topics, protocol: str, meters: list[str]) -> None:
        self.commands = commands
        self.link = link
        self.enabled = protocol == "5"
        self.prefix = f"{topics.root}/cmd/"
        self.replies = f"{topics.root}/reply/"
        self.meters = meters  #: every meter id: a read without "meter"/"meters" reads them all
        self.bucket = _BUCKETS.setdefault(topics.root, TokenBucket(BURST, RATE))
        self.refusals = TokenBucket(REFUSALS_BURST, REFUSALS_RATE)
        self.stats = CommandStats()
        self.reading: set[str] = set()  #: meters with a read running for a command
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = False  #: requests that come while the daemon stops are not taken
        self._logged: set[str] = set()

    def start(self) -> None:
        """Before the session starts: the subscription is made on every connect."""
        if not self.enabled:
            log.info(
                'remote commands (%s+) need MQTT 5 (Response Topic, Correlation Data); mqtt.protocol is "3.1.1": '
                "not subscribed",
                self.prefix,
            )
            return
        self.link.subscribe(self.prefix + "+", self.on_request)

    async def stop(self) -> None:
        self.stopped = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    # -- a request, in paho's callback: decide at once, never block ------------------------------

    def on_request(self, msg: Incoming) -> None:
        self.stats.received += 1
        if self.stopped:
            return
        command = msg.topic[len(self.prefix) :]
        if msg.retained:
            self._unanswerable(
                "retained", "a retained request on %s is ignored: a command must not be retained", msg.topic
            )
            return
        reply_to = msg.response_topic
        if not reply_to:
            self._unanswerable(
                "no-response-topic",
                "a request on %s has no MQTT 5 Response Topic: it cannot be answered",
                msg.topic,
            )
            return
        if not reply_to.startswith(self.replies) or any(c in reply_to for c in "+#\0"):
            self._unanswerable(
                "response-topic",
                "a request on %s asks for its answer on %r: answers go only to topics under %s",
                msg.topic,
                reply_to,
                self.replies,
            )
            return

        def refuse(error: str, retry_after: int | None = None) -> None:
            answer: dict[str, Any] = {"ok": False, "command": command, "error": error}
            if retry_after is not None:
                answer["retry_after_s"] = retry_after
            self._answer(reply_to, msg.correlation_data, answer)

        wait = self.bucket.take(RELOAD_COST if command == "reload" else 1.0)
        if wait:
            self._rate_limited(refuse, math.ceil(wait), LIMITS)
            return
        body = _body(msg.payload)
        if isinstance(body, str):
            refuse(body)
            return
        reads = self._meters_read(command, body)
        busy = sorted(self.reading.intersection(reads))
        if busy:
            self._rate_limited(refuse, READ_RETRY, f"a read of {', '.join(busy)} is still running")
            return
        self.reading.update(reads)
        task = asyncio.get_running_loop().create_task(
            self._run(command, body, reads, reply_to, msg.correlation_data), name=f"cmd-{command}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _meters_read(self, command: str, body: dict[str, Any]) -> set[str]:
        """The meters a read will ask their buses for (what Control reads; a malformed list: none,
        Control refuses it)."""
        if command != "read":
            return set()
        wanted = body.get("meters", [body["meter"]] if "meter" in body else self.meters)
        if not isinstance(wanted, list):
            return set()
        return {m for m in wanted if isinstance(m, str) and m in self.meters}

    def _rate_limited(self, refuse: Callable[[str, int], None], retry_after: int, why: str) -> None:
        self.stats.rate_limited += 1
        self._once("rate-limited", logging.WARNING, "remote commands are being rate limited (%s)", why)
        if self.refusals.take():
            self.stats.dropped += 1
            self._once("dropped", logging.WARNING, "a flood of remote commands: requests over the limit are dropped")
            return
        refuse(f"rate limited, retry after {retry_after} s ({why})", retry_after)

    # -- a command, as a task --------------------------------------------------------------------

    async def _run(
        self, command: str, body: dict[str, Any], reads: set[str], reply_to: str, correlation: bytes | None
    ) -> None:
        try:
            answer = await self.commands.handle(command, body)
        except Exception as exc:  # a bug: answered, logged once per cause
            cause = f"{type(exc).__name__}: {exc}"
            if cause not in self._logged:
                self._logged.add(cause)
                log.exception('remote command "%s" failed (%s); logged once', command, cause)
            answer = {"ok": False, "command": command, "error": f"internal error: {cause}"}
        finally:
            self.reading.difference_update(reads)
        self._answer(reply_to, correlation, answer)

    def _answer(self, topic: str, correlation: bytes | None, answer: dict[str, Any]) -> None:
        if not answer.get("ok"):
            self.stats.refused += 1
        payload = dumps(answer)
        if self.link.publish_direct(topic, payload, qos=1, correlation_data=correlation, content_type=CONTENT_TYPE):
            self.stats.answered += 1

    def _unanswerable(self, cause: str, fmt: str, *args: object) -> None:
        self.stats.unanswerable += 1
        self._once(cause, logging.WARNING, fmt + "; counted in health (commands.unanswerable), logged once", *args)

    def _once(self, cause: str, level: int, fmt: str, *args: object) -> None:
        if cause not in self._logged:
            self._logged.add(cause)
            log.log(level, fmt, *args)


def _body(payload: bytes) -> dict[str, Any] | str:
    """The request's JSON object (an empty payload is ``{}``), or why it is not one."""
    if len(payload) > MAX_REQUEST:
        return f"bad request: larger than {MAX_REQUEST // 1024} KiB"
    if not payload.strip():
        return {}
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"bad request: not JSON ({exc})"
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(body), "a number or null")
        return f"bad request: the payload must be a JSON object, not {kind}"
    return body
