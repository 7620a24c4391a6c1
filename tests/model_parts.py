"""A model file of the test's own, written from its points and loaded as the registry would."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.model import Model, load_model
from drivers.source import ProblemsError


def acme_model(tmp_path: Path, points: str, *, model: str = "PV1", kind: str = "pv", function: str = "input") -> Model:
    """``acme-<model>.yaml``: an Acme model of ``kind`` (uint16 points by default) with ``points``."""
    path = tmp_path / f"acme-{model.lower()}.yaml"
    path.write_text(
        f"vendor: Acme\nmodel: {model}\nkind: {kind}\nprotocol: modbus\nmanual: Acme {kind} register table\n"
        f"defaults: {{function: {function}, type: uint16}}\npoints:\n{points}"
    )
    return load_model(path)


def acme_problems(tmp_path: Path, points: str, **kw: str) -> str:
    """What loading such a model refuses, rendered as `check` prints it."""
    with pytest.raises(ProblemsError) as err:
        acme_model(tmp_path, points, **kw)
    return err.value.render()
