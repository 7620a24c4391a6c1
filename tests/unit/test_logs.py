"""Log lines carry syslog priorities when stderr is the journal's stream, and only then."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import ROOT


def log_lines(journal: bool) -> str:
    """What the daemon's logging writes to stderr when that is a stream socket, as systemd gives a service."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    if journal:
        st = os.fstat(theirs.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    code = (
        "import logging, sys\n"
        "from collector.cli import logs\n"
        "logs.setup(logging.DEBUG)\n"
        "log = logging.getLogger('collector.x')\n"
        "log.warning('disk nearly full')\n"
        "log.info('fine')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('task writer failed')\n"
    )
    subprocess.run([sys.executable, "-c", code], stderr=theirs.fileno(), env=env, cwd=ROOT, check=True, timeout=30)
    theirs.close()
    ours.settimeout(10)
    data = b""
    while chunk := ours.recv(65536):
        data += chunk
    ours.close()
    return data.decode()


def test_priorities_under_journald() -> None:
    lines = log_lines(journal=True).splitlines()
    assert lines[0].startswith("<4>WARNING") and lines[1].startswith("<6>INFO")
    # Every line of a traceback has the error's priority, so `journalctl -p err` shows it whole.
    tb = lines[2:]
    assert tb[0].startswith("<3>ERROR") and len(tb) > 3 and all(line.startswith("<3>") for line in tb)


def test_no_prefix_when_stderr_is_not_the_journal() -> None:
    out = log_lines(journal=False)
    assert "<4>" not in out and "WARNING collector.x: disk nearly full" in out
