"""``qorch operator`` with the scripted gateway (a test double) in place of real gateways.

Run as ``python -m tests.harness.scripted_operator operator [its options]`` with the
repository root importable (``tests.harness.operator`` sets PYTHONPATH). It replaces
``qorch.operator.runtime.make_gateway`` before Kopf starts (the startup handler's
``Runtime.build`` calls it), then runs ``qorch operator`` in this same process: the
harness's PID is the operator's, so SIGTERM and SIGKILL reach it as before.

The product has no hook for this: how long a scripted job queues and runs is set by
variables of the test harness, not of the operator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from qorch import cli
from qorch.gateway.base import GatewayClient, GatewayTarget
from qorch.operator import runtime
from qorch.operator.settings import OperatorSettings
from tests.harness.scripted_gateway import ScriptedGateway

QUEUE_SECONDS_ENV = "QORCH_TEST_SCRIPTED_QUEUE_SECONDS"
RUN_SECONDS_ENV = "QORCH_TEST_SCRIPTED_RUN_SECONDS"
DEFAULT_SECONDS = 0.5


def _seconds(name: str) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return DEFAULT_SECONDS
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def make_scripted_gateway(
    settings: OperatorSettings, targets: dict[str, GatewayTarget]
) -> GatewayClient:
    """``make_gateway``'s stand-in: one scripted gateway for every backend (URLs unused)."""
    return ScriptedGateway(
        queue_seconds=_seconds(QUEUE_SECONDS_ENV), run_seconds=_seconds(RUN_SECONDS_ENV)
    )


def main(argv: Sequence[str] | None = None) -> int:
    # Read (and so checked) now: a bad value fails the start, not the first handler.
    make_scripted_gateway(OperatorSettings(), {})
    runtime.make_gateway = make_scripted_gateway
    return cli.main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
