"""The JSON Schemas of docs/schemas/, applied to what a subscriber received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).parents[1] / "docs" / "schemas"
BY_SUFFIX = {
    "/reading": "reading",
    "/events": "event",
    "/status": "status",
    "/meta": "meta",
    "/health": "health",
    "/interval": "interval",
}


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


def validate(topic: str, payload: dict[str, Any]) -> str:
    """Validates a payload by its topic; returns the schema's name."""
    for suffix, name in BY_SUFFIX.items():
        if topic.endswith(suffix):
            jsonschema.validate(payload, schema(name))
            return name
    raise AssertionError(f"no schema for topic {topic}")
