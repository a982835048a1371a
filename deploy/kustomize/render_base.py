#!/usr/bin/env python3
"""Render the Kustomize base (deploy/kustomize/base) from the Helm chart, default values.

The chart (charts/qorch) is the one source of the operator's manifests; the base is what
``helm template`` makes of it, split into one file per chart file, with a kustomization.yaml
listing them (CRDs included). After changing the chart, run

    .venv/bin/python deploy/kustomize/render_base.py

and commit the result; ``--check`` (run by tests/integration/test_gitops.py) fails when the
committed base differs from a fresh render.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "qorch"
BASE = REPO / "deploy" / "kustomize" / "base"
RELEASE = "qorch"
NAMESPACE = "qorch-system"
# The Kubernetes version the chart tests render for (tests/integration/test_chart.py).
KUBE_VERSION = "v1.36.3"
SOURCE = "# Source: "
HEADER = (
    "# Generated from {what}\n"
    "# by deploy/kustomize/render_base.py (helm template, default values, release {release},\n"
    "# namespace {namespace}). Do not edit: change the chart and render again, or patch it in\n"
    "# an overlay.\n"
)


def find_helm() -> Path:
    """The helm binary hack/install-helm.sh builds (or finds cached)."""
    out = subprocess.run(
        [str(REPO / "hack" / "install-helm.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "helm"


def helm_template(helm: Path) -> str:
    return subprocess.run(
        [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--include-crds",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout


def split(manifest: str) -> dict[str, list[str]]:
    """The rendered documents by the chart file they came from (``# Source:`` line), in
    the order helm printed them; the Source line itself is dropped."""
    by_source: dict[str, list[str]] = {}
    for doc in manifest.split("\n---\n"):
        lines = doc.removeprefix("---\n").strip("\n").splitlines()
        if not lines:
            continue
        if not lines[0].startswith(SOURCE):
            raise ValueError(f"a rendered document without a {SOURCE!r} line: {lines[:3]}")
        source = lines[0].removeprefix(SOURCE).removeprefix(f"{CHART.name}/")
        body = "\n".join(lines[1:]).strip("\n")
        if body:
            by_source.setdefault(source, []).append(body + "\n")
    return by_source


def render(helm: Path) -> dict[str, str]:
    """The base's files (relative path -> text): one per chart file, and kustomization.yaml."""
    files: dict[str, str] = {}
    for source, docs in split(helm_template(helm)).items():
        if source.startswith("crds/"):
            path = source  # crds/<group>_<plural>.yaml
        elif source.startswith("templates/"):
            path = source.removeprefix("templates/")
        else:
            raise ValueError(f"unexpected chart file {source!r}")
        head = HEADER.format(what=f"charts/qorch/{source}", release=RELEASE, namespace=NAMESPACE)
        files[path] = head + "---\n" + "---\n".join(docs)
    resources = "".join(f"- {path}\n" for path in files)
    files["kustomization.yaml"] = (
        HEADER.format(
            what="charts/qorch (the list of its files)", release=RELEASE, namespace=NAMESPACE
        )
        + "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        + "kind: Kustomization\n"
        + "resources:\n"
        + resources
    )
    return files


def on_disk(base: Path) -> dict[str, str]:
    return {
        str(p.relative_to(base)): p.read_text()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.suffix in (".yaml", ".yml")
    }


def write(base: Path, files: dict[str, str]) -> None:
    for stale in set(on_disk(base)) - set(files):
        (base / stale).unlink()
    for path, text in files.items():
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def differences(base: Path, files: dict[str, str]) -> list[str]:
    have = on_disk(base)
    out: list[str] = []
    for path in sorted(set(have) | set(files)):
        if path not in files:
            out.append(f"{path}: not rendered from the chart any more")
        elif path not in have:
            out.append(f"{path}: missing (the chart renders it)")
        elif have[path] != files[path]:
            diff = difflib.unified_diff(
                have[path].splitlines(),
                files[path].splitlines(),
                f"committed/{path}",
                f"rendered/{path}",
                lineterm="",
                n=1,
            )
            out.append("\n".join(list(diff)[:40]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the base is not current")
    parser.add_argument("--output-dir", type=Path, default=BASE)
    parser.add_argument("--helm", type=Path, help="helm binary (default: hack/install-helm.sh)")
    args = parser.parse_args(argv)
    files = render(args.helm or find_helm())
    if args.check:
        problems = differences(args.output_dir, files)
        if problems:
            print(
                f"{args.output_dir} is not what charts/qorch renders; run "
                "`.venv/bin/python deploy/kustomize/render_base.py`:\n" + "\n".join(problems)
            )
            return 1
        return 0
    write(args.output_dir, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
