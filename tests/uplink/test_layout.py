"""The uplink core stands alone: no daemon imports, cryptography behind crypto.py only, and the
default function-id table names canonical quantities only, each id once per kind."""

from __future__ import annotations

from pathlib import Path

from collector.uplink.functions import DEFAULT_FUNCTION_IDS
from drivers.quantities import QUANTITIES
from tests.unit.test_architecture import files, importers, imports

ROOT = Path(__file__).parents[2]


def test_cryptography_behind_one_module() -> None:
    assert importers("cryptography") == {"collector/uplink/crypto.py"}


def test_the_uplink_core_imports_no_daemon_cli_or_config() -> None:
    wrong = {
        str(p.relative_to(ROOT))
        for p in files("collector/uplink")
        if any(m.startswith(("collector.daemon", "collector.cli", "collector.config")) for m in imports(p))
    }
    assert not wrong


def test_function_ids() -> None:
    for kind, table in DEFAULT_FUNCTION_IDS.items():
        assert set(table) <= set(QUANTITIES), kind
        assert len(set(table.values())) == len(table), kind
