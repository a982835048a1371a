"""How Qorch runs Kopf at scale: what it skips of Kopf's per-event work, and why it may.

Measured placing 1,000 pods through the operator (``bench/scale.py --profile``): Kopf's
own machinery took most of the operator's CPU, ahead of Qorch's planning. Two parts of it
serve features Qorch does not use."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

# Kopf's line for each handler call that returned normally: f"{handler} succeeded."
_SUCCESS_PREFIXES = ("Handler ", "Daemon ", "Timer ")


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base, never built. On every event of every watched object Kopf builds
    the object's "essence" (a deep copy of the whole body, status included, minus system
    fields) and compares it with the last handled one, to tell on.create, on.update and
    on.resume handlers what changed. Qorch registers none of those (its handlers are
    indexes, event handlers, a timer and a daemon that reads the whole object each cycle:
    ``test_kopf_setup`` fails if one appears), so the essence was built and thrown away:
    13% of the operator's CPU in the 1,000-pod benchmark. Empty essences compare equal:
    no change, which only resets idle daemons and timers (Qorch has none)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class QuietHandlerSuccesses(logging.Filter):
    """Drops Kopf's INFO line for each handler call that succeeded ("Handler
    'track_gateway_url' succeeded."; when pods were still watched through Kopf, one per pod
    event: 3 of every 4 lines of the operator's log and 8% of its CPU in the benchmark).
    Failures, retries, Kopf's other lines and Qorch's own pass; ``qorch operator
    --verbose`` keeps them all."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (
            record.levelno == logging.INFO
            and isinstance(msg, str)
            and msg.endswith(" succeeded.")
            and msg.startswith(_SUCCESS_PREFIXES)
        )


def quiet_handler_successes() -> None:
    """Install ``QuietHandlerSuccesses`` on the logger Kopf's per-object lines go to."""
    logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietHandlerSuccesses) for f in logger.filters):
        logger.addFilter(QuietHandlerSuccesses())
