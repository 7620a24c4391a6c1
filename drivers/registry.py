"""Finds meter models by name: the built-in files under drivers/models/, or a site's own file.

Nothing registers itself at import time: a model exists because its file exists, and a site can
add one by giving a path in its config (``model: ./models/acme-em100.yaml``).

Loaded models are cached, each under its file's resolved path together with the file's
modification time and size when it was read: a site file edited while the daemon runs is read
again on the next load (a SIGHUP reload), an unchanged one is not. Loading costs 1-20 ms a file
(the YAML and every check); one ``stat`` costs tens of microseconds, and a config loads its model
once per meter, ``scan`` every built-in model once per unit id.
"""

from __future__ import annotations

from pathlib import Path

from drivers.model import Model, load_model

MODELS_DIR = Path(__file__).parent / "models"

#: resolved path -> (st_mtime_ns, st_size) of the file that was read, and the model read from it
_cache: dict[Path, tuple[tuple[int, int], Model]] = {}


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
    """Load a model by name or path, cached until its file changes; raises KeyError for an unknown
    name and drivers.source.ProblemsError for a broken or unreadable file."""
    path = locate(ref, base)
    if path is None:
        raise KeyError(ref)
    path = path.resolve()
    try:
        st = path.stat()
    except OSError:
        _cache.pop(path, None)
        return load_model(path)  # raises ProblemsError: "cannot read: ..."
    # The stamp is taken before the file is read: a write in between makes the next load read the
    # file again, rather than keep what was read under the stamp of the write.
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    model = load_model(path)
    _cache[path] = (stamp, model)
    return model
