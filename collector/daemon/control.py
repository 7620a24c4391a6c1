"""Commands to the running daemon: one table, reached over a Unix socket beside the buffer (the CLI on
the same machine) and over MQTT 5 request/response (a platform, collector.daemon.remote).

While the daemon runs it holds the RS-485 lines (opened exclusively): a second master on a line
would garble both. So `meter-collector read` asks the daemon instead, which reads on its bus worker
between polls (BusWorker.ask): one master on the line, the answer within a poll's time, nothing
stored. Every command only reads: anything that would write to a meter is refused with the reason.

The socket speaks one JSON object per line each way, ``{"command": "read", ...}`` then the
answer, and is closed. It is created 0660 (owner and group: the service's group,
``meter-collector``, is how a technician's account is let in) and removed on stop; a socket left by
a daemon that died is taken over, and one that answers means another daemon is running on this
buffer, which refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector import __version__, readout
from collector.config import load_config
from collector.daemon.bus import Busy
from drivers.source import ProblemsError

if TYPE_CHECKING:
    from collector.daemon.service import Daemon

log = logging.getLogger(__name__)

COMMANDS = ("ping", "status", "read", "reload")
#: words a platform might send that would change a meter or the gateway: refused, with this reason
READ_ONLY = "this gateway only reads: it never writes to a meter, its settings or its clock"
MAX_REQUEST = 64 * 1024  #: bytes of one request line
ANSWER_TIMEOUT = 120.0  #: seconds a client waits for a read (every meter of a bus in turn, each its timeouts)


class Refused(Exception):
    """A command that is not answered, with the reason the asker sees."""


def socket_path(buffer_path: str) -> Path:
    return Path(buffer_path + ".sock")


class Control:
    """The answers. ``request_reload`` is the daemon's SIGHUP: called after the new config was
    checked the way SIGHUP checks it."""

    def __init__(self, daemon: Daemon, request_reload: Callable[[], None] | None) -> None:
        self.daemon = daemon
        self.request_reload = request_reload
        self.started = time.monotonic()
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "ping": self._ping,
            "status": self._status,
            "read": self._read,
            "reload": self._reload,
        }

    async def handle(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        """``{"ok": true, ...}`` or ``{"ok": false, "error": reason}``; never raises for a bad request."""
        handler = self.handlers.get(command)
        if handler is None:
            return {"ok": False, "command": command, "error": _unknown(command)}
        try:
            return {"ok": True, "command": command, **await handler(body)}
        except (Refused, Busy) as exc:
            return {"ok": False, "command": command, "error": str(exc)}

    async def _ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "gateway": self.daemon.config.gateway.id,
            "version": __version__,
            "config": self.daemon.config.path,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }

    async def _status(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"health": await self.daemon.health_payload()}

    async def _read(self, body: dict[str, Any]) -> dict[str, Any]:
        config = self.daemon.config
        wanted = body.get("meters", [body["meter"]] if "meter" in body else None)
        if wanted is None:
            wanted = [m.id for m in config.meters]
        if not isinstance(wanted, list) or not all(isinstance(m, str) for m in wanted):
            raise Refused('"meter" must be a meter id, "meters" a list of them')
        known = {m.id for m in config.meters}
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise Refused(f"unknown meter(s): {', '.join(unknown)}")
        raw = body.get("raw") is True
        readings = readout.continued(config, await self.daemon.read_now(wanted, with_hidden=raw))
        docs = []
        for r in readings:
            doc = readout.reading_doc(r, config, raw=raw)
            if body.get("text") is True:
                doc["text"] = readout.render_reading(r, config, raw=raw)
            docs.append(doc)
        return {"readings": docs}

    async def _reload(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.request_reload is None:
            raise Refused("this daemon cannot reload")
        path = self.daemon.config.path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ProblemsError as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            raise Refused(f"{path} is not valid, the running config stays: {problems}") from None
        if new.mqtt is None and new.datacenter is None:
            raise Refused(f"{path} has neither an mqtt nor a datacenter section, the running config stays")
        log.info("reload asked through a command")
        self.request_reload()
        return {"reloading": path}


def _unknown(command: str) -> str:
    if any(word in command.lower() for word in ("write", "set", "put", "reset", "clear", "time", "sync")):
        return f'"{command}" refused: {READ_ONLY}'
    return f'unknown command "{command}"; this gateway answers {", ".join(COMMANDS)} (and only reads)'


class ControlSocket:
    """The Unix socket beside the buffer."""

    def __init__(self, control: Control, path: Path) -> None:
        self.control = control
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind; RuntimeError when another daemon answers on it. A path the OS cannot bind (too long,
        a read-only folder) is logged and the daemon runs without it: `read` then says so."""
        if self.path.exists() or self.path.is_symlink():
            if await asyncio.to_thread(_answers, self.path):
                raise RuntimeError(
                    f"another meter-collector is running on this buffer: it answers on {self.path} "
                    "(stop it first: systemctl stop meter-collector)"
                )
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a daemon that died
        try:
            self.server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_REQUEST)
            os.chmod(self.path, 0o660)
        except OSError as exc:
            log.error(
                "cannot open the control socket %s (%s): `read` cannot go through the daemon while it runs",
                self.path,
                exc.strerror or exc,
            )
            self.server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                    raise ValueError('a request is a JSON object with a "command"')
            except (ValueError, asyncio.LimitOverrunError) as exc:
                answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                answer = await self.control.handle(request["command"], request)
            writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        await self.server.wait_closed()
        self.server = None


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class NoDaemon(Exception):
    """No daemon answers on this buffer's socket: read the meters directly."""


def ask(buffer_path: str, request: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """The CLI's side: the running daemon's answer. NoDaemon when none runs on this buffer;
    PermissionError when one runs but this user may not talk to it."""
    path = socket_path(buffer_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise NoDaemon(str(exc)) from None
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer
