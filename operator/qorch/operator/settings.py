"""Operator settings, read once from the environment at start-up (Helm sets them)."""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from dataclasses import dataclass, field

from qorch.orchestrator.snapshot import PlannerConfig


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "on", "yes"):
        return True
    if raw.lower() in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not on/off")


def _start_priority() -> int:
    return int(time.time() * 1000) * 1000 + random.randint(0, 999)


@dataclass(frozen=True)
class OperatorSettings:
    worker_image: str = "ghcr.io/qorch/qorch:0.1.0"
    gateway_token_file: str | None = None  # projected SA token (audience qorch-gateway)
    resync_seconds: float = 10.0  # re-plan at least this often even without events
    # ... and at most this often: the pod events of a burst (one pod bound then running,
    # ten pods at once) wait for one plan and one status write, not one each (a pod event
    # that leaves a finished pod for every subtask ends the wait: ``handlers``).
    min_cycle_seconds: float = 0.5
    # Kopf peering: the replica with the highest priority acts. The newest start wins
    # (milliseconds since the epoch, plus a random tie-break), so a replica that replaces
    # a killed one takes over at once instead of waiting out the dead one's lease; an old
    # replica that is still alive pauses in its favour.
    priority: int = field(default_factory=_start_priority)
    metrics_port: int = 8080
    prometheus_url: str | None = None  # None: no live metrics (the planner says so)
    metrics_refresh_seconds: float = 15.0
    # A replica killed without notice holds the lead this long; lower means faster failover
    # and more keep-alive writes.
    peering_lifetime_seconds: int = 60
    # The predictor's model directory (the image's models, or a mounted ConfigMap / PVC);
    # None: analytic predictions only (the workflows' Predicted condition says so).
    models_dir: str | None = None
    model_refresh_seconds: float = 30.0  # how often the directory is re-scanned (hot reload)
    # The cluster-wide decision pass places (and moves) circuit subtasks by predicted cost;
    # off: each workflow places by the static rule (the default until the pass is proven
    # against the rule on the replayed traces, issue 14).
    cluster_pass: bool = False
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    @classmethod
    def from_env(cls) -> OperatorSettings:
        priority_raw = os.environ.get("QORCH_PRIORITY")
        defaults = cls()
        return cls(
            worker_image=os.environ.get("QORCH_WORKER_IMAGE", defaults.worker_image),
            gateway_token_file=os.environ.get("QORCH_GATEWAY_TOKEN_FILE") or None,
            resync_seconds=_float("QORCH_RESYNC_SECONDS", 10.0),
            min_cycle_seconds=_float("QORCH_MIN_CYCLE_SECONDS", 0.5),
            priority=int(priority_raw) if priority_raw else defaults.priority,
            metrics_port=int(_float("QORCH_METRICS_PORT", 8080)),
            prometheus_url=os.environ.get("QORCH_PROMETHEUS_URL") or None,
            metrics_refresh_seconds=_float("QORCH_METRICS_REFRESH_SECONDS", 15.0),
            peering_lifetime_seconds=int(_float("QORCH_PEERING_LIFETIME_SECONDS", 60)),
            models_dir=os.environ.get("QORCH_MODELS_DIR") or None,
            cluster_pass=_flag("QORCH_CLUSTER_PASS", False),
            model_refresh_seconds=_float("QORCH_MODEL_REFRESH_SECONDS", 30.0),
            planner=PlannerConfig(
                retry_backoff_base=dt.timedelta(seconds=_float("QORCH_RETRY_BACKOFF_SECONDS", 10)),
                retry_backoff_max=dt.timedelta(
                    seconds=_float("QORCH_RETRY_BACKOFF_MAX_SECONDS", 300)
                ),
                lost_pod_grace=dt.timedelta(seconds=_float("QORCH_LOST_POD_GRACE_SECONDS", 30)),
                gateway_unknown_grace=dt.timedelta(
                    seconds=_float("QORCH_GATEWAY_UNKNOWN_GRACE_SECONDS", 60)
                ),
                source_wait=dt.timedelta(seconds=_float("QORCH_SOURCE_WAIT_SECONDS", 120)),
            ),
        )
