"""Config cases: a broken variant of a valid config -> exit 2 and the error naming line and field.

Each folder under cases/ holds config.yaml and expected.txt: the error as `check` prints it,
without the file name (``LINE path: message``, a prefix of the real line). A case may hold other
files its config names: relative paths in a config are relative to the config's folder. Cases that
need file modes, symlinks or timing are in test_config_runtime.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli.commands import main
from collector.config import load_config
from drivers.source import ProblemsError

HERE = Path(__file__).parent
CASES = sorted(p for p in (HERE / "cases").iterdir() if p.is_dir())


def test_the_valid_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(HERE / "valid.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_broken_config_is_refused_with_its_line_and_field(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = case / "config.yaml"
    expected = (case / "expected.txt").read_text().strip()
    assert main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.splitlines()]
    assert any(line.startswith(f"{config}:{expected}") for line in lines), err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (HERE / "valid.yaml").read_text()
    text = (
        text.replace("parity: E", "parity: X")
        .replace("address: 2", "address: 0")
        .replace("ct_ratio: 40", "ct_ratio: 0")
    )
    path = tmp_path / "three.yaml"
    path.write_text(text)
    with pytest.raises(ProblemsError) as err:
        load_config(path)
    assert len(err.value.problems) == 3
    assert err.value.render().startswith(f"{path}: 3 errors, nothing started")


def test_the_example_config_documents_a_valid_site() -> None:
    # The example names /etc/meter-collector/mqtt.secret and ca.pem, which exist on a gateway, not
    # here: its files are checked in test_config_runtime.py, in a copy with those files made.
    config = load_config(HERE.parent.parent / "config" / "example.yaml", check_files=False)
    assert {b.type for b in config.buses.values()} == {"rtu", "tcp", "rtu-over-tcp", "dlt645", "cjt188"}
    main_incomer = config.meter("main-incomer")
    assert main_incomer.calibration.ct_ratio == 40
    assert main_incomer.calibration.points["energy_import"].offset == 1520.4


def test_the_example_datacenter_section_is_valid_when_uncommented(tmp_path: Path) -> None:
    lines = (HERE.parent.parent / "config" / "example.yaml").read_text().splitlines()
    start = next(n for n, x in enumerate(lines) if x.startswith("# datacenter:"))
    out = []
    for n, line in enumerate(lines):
        inside = start <= n and all(x.startswith("#") for x in lines[start : n + 1])
        if inside or line.startswith(("    # datacenter_id:", "    # function_ids:")):
            line = line.replace("# ", "", 1)
        out.append(line)
    (tmp_path / "site.yaml").write_text("\n".join(out) + "\n")
    config = load_config(tmp_path / "site.yaml", check_files=False)
    assert config.datacenter is not None and config.datacenter.period == 900
    assert config.datacenter.variant.md5_order == "sequence+key"
    assert config.meter("main-incomer").function_ids == {"energy_import": "1"}
    assert any('"roof-pv": category: is not set: the meter is not reported' in w for w in config.warnings)


def test_a_site_model_file_by_path(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "acme-em1.yaml").write_text(
        "vendor: Acme\nmodel: EM1\nkind: electricity\nprotocol: modbus\nmanual: Acme EM1 manual v1\n"
        "points:\n  - {name: voltage_l1, address: 0, unit: V}\n  - {name: energy_import, address: 2, unit: Wh}\n"
    )
    text = (HERE / "valid.yaml").read_text().replace("model: chint-dtsu666", "model: models/acme-em1.yaml")
    (tmp_path / "site.yaml").write_text(text)
    config = load_config(tmp_path / "site.yaml")
    m = config.meter("sub").model
    assert m.name == "acme-em1" and m.point("energy_import").unit == "kWh"
    # A broken site model is reported with its own file and line.
    (tmp_path / "models" / "acme-em1.yaml").write_text("vendor: Acme\nmodel: EM1\nkind: electricity\n")
    with pytest.raises(ProblemsError) as err:
        load_config(tmp_path / "site.yaml")
    assert "acme-em1.yaml:1 protocol: is required" in err.value.render()
