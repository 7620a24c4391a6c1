"""The folders tell the data path (docs/architecture.md): who may import whom, and each third-party
library behind one module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def importers(prefix: str) -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for p in files("collector") + files("drivers")
        if any(m == prefix or m.startswith(prefix + ".") for m in imports(p))
    }


def test_drivers_import_nothing_from_collector() -> None:
    wrong = {str(p.relative_to(ROOT)) for p in files("drivers") if any(m.startswith("collector") for m in imports(p))}
    assert not wrong


def test_the_daemon_never_imports_the_cli_or_the_simulator() -> None:
    wrong = {
        str(p.relative_to(ROOT))
        for p in files("collector/daemon")
        if any(m.startswith(("collector.cli", "collector.simulator")) for m in imports(p))
    }
    assert not wrong


def test_each_protocol_library_behind_one_module() -> None:
    assert importers("pymodbus") == {"drivers/modbus/transport.py"}
    assert importers("paho") == {"collector/daemon/publisher.py"}
    assert importers("apscheduler") == {"collector/daemon/scheduler.py"}
    assert importers("cryptography") == {"collector/uplink/crypto.py"}


def test_no_mqtt_broker_of_our_own_ships() -> None:
    suspects = [p for p in files("collector") if "broker" in p.name]
    assert not suspects
