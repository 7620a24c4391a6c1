"""Finds meter models by name: the built-in files under drivers/models/, or a site's own file.

Nothing registers itself at import time: a model exists because its file exists, and a site can
add one by giving a path in its config (``model: ./models/acme-em100.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from drivers.model import Model, load_model

MODELS_DIR = Path(__file__).parent / "models"

_cache: dict[Path, Model] = {}


def builtin_paths() -> dict[str, Path]:
    """Every built-in model: name -> file."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*/*.yaml"))}


def names() -> list[str]:
    return sorted(builtin_paths())


def is_path(ref: str) -> bool:
    """A model reference is a path when it looks like one; otherwise it is a built-in name."""
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def locate(ref: str, base: Path | None = None) -> Path | None:
    """The file a model reference names, or None when no such built-in model exists."""
    if is_path(ref):
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    return builtin_paths().get(ref)


def load(ref: str, base: Path | None = None) -> Model:
    """Load a model by name or path (cached); raises KeyError for an unknown name and
    drivers.source.ProblemsError for a broken file."""
    path = locate(ref, base)
    if path is None:
        raise KeyError(ref)
    path = path.resolve()
    if path not in _cache:
        _cache[path] = load_model(path)
    return _cache[path]
