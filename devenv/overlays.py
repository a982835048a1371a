"""Test-only additions to the manifests users copy from ``examples/``.

The examples stay free of anything that only the test cluster understands. Where a test
(or ``make demo``) applies one on the KWOK cluster, whose fake nodes run no containers, it
adds KWOK's completion annotation here so that the classical steps finish by themselves
(``devenv/kwok-stages.yaml``). Circuit and variational subtasks have no
annotations in the schema: a test that runs them gives them a gateway or the node agent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

KWOK_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def with_kwok_completion(manifest: dict[str, Any], delay: str = "1s") -> dict[str, Any]:
    """A copy of a ``HybridWorkflow`` manifest whose classical subtasks' pods carry
    KWOK's completion annotation: KWOK marks them Succeeded ``delay`` after they run."""
    out = copy.deepcopy(manifest)
    for subtask in out.get("spec", {}).get("subtasks", []):
        classical = subtask.get("classical")
        if classical is not None:
            classical["annotations"] = {**(classical.get("annotations") or {}), KWOK_DELAY: delay}
    return out


def example(name: str) -> dict[str, Any]:
    """``examples/<name>``, a single-document manifest, as a dict."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(doc, dict), f"examples/{name} is not one manifest"
    return doc


def kwok_example(name: str, delay: str = "1s") -> str:
    """``examples/<name>`` with KWOK's completion annotation on its classical steps, as
    text for ``kubectl apply -f -``."""
    return json.dumps(with_kwok_completion(example(name), delay))
