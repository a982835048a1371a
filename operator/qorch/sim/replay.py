"""One replay of a scenario under several policies, side by side: the same world (traces,
seeds) and the same workflows for each, a fresh world per policy. What ``qorch simulate``
and ``bench/real_traces.py`` run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from qorch.predictor import Predictor
from qorch.sim.policies import make_policy
from qorch.sim.policy_names import POLICIES
from qorch.sim.records import TwinResult
from qorch.sim.scenario import Scenario, build_world, load_traces, make_workflows
from qorch.sim.twin import Twin, make_predictor


def load_scenario(path: Path) -> Scenario:
    """A scenario file (YAML mapping of ``Scenario`` fields); a bad one raises ValueError
    naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the scenario: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a scenario is a mapping of fields")
    try:
        return Scenario.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def replay(
    scenario: Scenario,
    policies: Sequence[str] = POLICIES,
    *,
    models_dir: str | None = "models",
    predictor: Predictor | None = None,
    pass_seconds: float = 60.0,
    on_progress: Callable[[str, float, float], None] | None = None,
) -> list[TwinResult]:
    """Each policy's result, in the order given. ``on_progress(policy, now, horizon)``."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; known: {', '.join(POLICIES)}")
    traces = load_traces(scenario.data_dir, scenario.gpu_time_scale)
    predictor = predictor or make_predictor(models_dir)
    horizon = scenario.hours * 3600.0
    results = []
    for name in policies:
        world = build_world(scenario, traces)
        workflows = make_workflows(scenario, world.backends)
        policy = make_policy(name, seed=scenario.seed, pass_seconds=pass_seconds)
        twin = Twin(world.backends, world.pools, workflows, policy, predictor=predictor)

        def progress(now: float, policy_name: str = name) -> None:
            if on_progress is not None:
                on_progress(policy_name, now, horizon)

        results.append(twin.run(horizon, progress))
    return results


def scenario_fields() -> dict[str, Any]:
    """The fields a scenario file may set, with their defaults (for ``--help``)."""
    default = Scenario()
    return {name: getattr(default, name) for name in Scenario.__dataclass_fields__}
