"""The repository's shape: `operator/` must not shadow the stdlib, CRDs match the models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_operator_from_repo_root_gives_the_stdlib_module() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import operator, sys; print(operator.__file__); "
            "print(operator.itemgetter(1)([0, 42]))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    path, value = out.stdout.split()
    assert "site-packages" not in path and not path.startswith(str(REPO / "operator")), path
    assert value == "42"


def test_generated_crds_match_the_models() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qorch.cli", "crds", "--check", "--output-dir", str(REPO / "crds")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_crd_check_fails_on_drift(tmp_path: Path) -> None:
    for f in (REPO / "crds").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    victim = tmp_path / "qorch.io_hybridworkflows.yaml"
    victim.write_text(victim.read_text().replace("maxLength: 30", "maxLength: 31", 1))
    out = subprocess.run(
        [sys.executable, "-m", "qorch.cli", "crds", "--check", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "qorch.io_hybridworkflows.yaml" in out.stderr
