"""Logging set-up: syslog priorities under journald, timestamps elsewhere.

Under systemd the daemon's stderr goes to the journal, which reads a ``<N>`` prefix on each line as
that line's syslog priority (sd-daemon(3), SyslogLevelPrefix=yes by default). Without it every line
is priority 6 (info) and ``journalctl -p warning`` shows nothing. The prefix is used only when
stderr really is the journal stream named by ``$JOURNAL_STREAM`` (device:inode), so a command run
by hand inside a service's environment, or piped to a file, prints plain lines.

Frame traces (``--trace``, drivers/trace.py) are DEBUG lines of the logger ``drivers.trace``, written
whatever the level of the rest, and only with ``--trace``: ``-v`` alone does not turn them on.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from drivers import trace as frames

#: Python level -> syslog priority (sd-daemon.h: SD_ERR 3, SD_WARNING 4, SD_INFO 6, SD_DEBUG 7)
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def journal_stream(stream: TextIO) -> bool:
    """Is ``stream`` the journal's stream socket ($JOURNAL_STREAM = "device:inode")?"""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    """Each line, a traceback's too, starts with the record's ``<N>`` priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def priority(level: int) -> int:
    for threshold in sorted(PRIORITIES, reverse=True):
        if level >= threshold:
            return PRIORITIES[threshold]
    return 7


def setup(level: int, stream: TextIO | None = None, *, trace: bool = False) -> None:
    """Log at ``level`` to ``stream`` (stderr); ``trace``: frame traces too, at any level."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if journal_stream(stream):
        # The journal stamps each line itself.
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    frames.enable(trace)
