"""Fingerprints of what made an output (model, inputs, settings): stable content hashes, and the
differences between a stored fingerprint and a current one, said in words."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def digest(*parts: Any) -> str:
    """A 16-hex-digit SHA-256 of arrays (dtype, shape and bytes), bytes, and JSON-able values, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_digest(path: str | Path, block: int = 1 << 20) -> str:
    """Content hash of a file (16 hex digits), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def differences(stored: dict | None, current: dict, prefix: str = "") -> list[str]:
    """What changed from ``stored`` to ``current``, as ``key: old -> new`` lines (nested keys dotted)."""
    if stored is None:
        return ["no record of what made it"]
    lines = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            lines.extend(differences(old, new, f"{prefix}{key}."))
        elif old != new:
            lines.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return lines


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def combined(fingerprints: Iterable[dict]) -> str:
    """One hash of several fingerprints (e.g. every output of a batch of rollouts)."""
    return digest(list(fingerprints))
