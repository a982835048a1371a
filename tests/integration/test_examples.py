"""Every example is valid against the CRDs as installed (server-side dry run) and parses
with the typed models: users can apply them as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devenv.controlplane import ControlPlane
from qorch.api import HybridWorkflow, QuantumBackend

pytestmark = pytest.mark.controlplane
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MODELS = {"HybridWorkflow": HybridWorkflow, "QuantumBackend": QuantumBackend}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path, control_plane: ControlPlane) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        MODELS[doc["kind"]].model_validate(doc)
    out = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", str(path), check=False
    )
    assert out.returncode == 0, out.stderr
