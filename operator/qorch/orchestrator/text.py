"""Bounded text: every message Qorch writes goes through here, so no status field, Event
or condition can exceed what its schema (or the apiserver) accepts."""

from __future__ import annotations

import hashlib

MESSAGE_LIMIT = 4096  # condition and subtask messages (the CRD's maxLength)
SHORT_LIMIT = 1024  # history entries and Kubernetes Event messages


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    kept = limit
    for _ in range(3):  # the marker's length depends on the count it states
        marker = f" ... [{len(text) - kept} more characters]"
        kept = max(limit - len(marker), 0)
    return (text[:kept] + f" ... [{len(text) - kept} more characters]")[:limit]


def bounded_name(name: str, limit: int, keep_suffix: str = "") -> str:
    """A Kubernetes name of at most ``limit`` characters: unchanged when it fits, else its
    head plus a stable hash of the whole, then ``keep_suffix`` (which must stay readable,
    e.g. ``-<subtask>-<attempt>``). Distinct inputs keep distinct names in practice."""
    full = name + keep_suffix
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    head = name[: max(limit - len(keep_suffix) - len(digest) - 1, 1)].rstrip("-.")
    return f"{head}-{digest}{keep_suffix}"
