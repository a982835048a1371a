"""Chaos: a mixed set of workflows (fan-out, chains, retries, doomed ones) on the real stack
while the operator is SIGKILLed at random points and a gateway, Prometheus and the
kube-apiserver are restarted mid-run. Every subtask is accounted for: none lost, none
run twice (counted at the gateway, from its execution journal, and from every pod ever
created), every workflow Succeeded or Failed with a reason.

    .venv/bin/python bench/chaos.py --runs 30            # the full figure
    .venv/bin/python bench/chaos.py --quick              # 2 short runs
    .venv/bin/python bench/chaos.py --seed 1007 --runs 1 # reproduce one run by its seed

Run i uses seed ``--seed + i``; the seed fixes the workflows and the fault schedule.
Prints one table row per run and a summary line; exits 1 when any invariant fails,
after printing each failing run's seed, faults, workflow status and operator log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devenv import controlplane as cp_mod  # noqa: E402
from devenv import prometheus as prom_mod  # noqa: E402
from devenv.rbac import least_privilege_kubeconfig  # noqa: E402
from tests.harness import chaos  # noqa: E402

SMOKE = """
from qorch.operator import handlers
from qorch.operator.runtime import make_gateway
from qorch.operator.settings import OperatorSettings
from qorch.gateway import http, service
make_gateway(OperatorSettings(), {})
"""


def snapshot_code(work: Path, source: str, attempts: int = 20) -> str:
    """Copy operator/qorch aside and put the copy first on PYTHONPATH for every process this
    run starts: a 30-run figure must measure one version of the code, not a tree others
    are editing. ``source``: "tree" (the working tree; retried until the copy imports and
    builds its gateway client) or "head" (the last commit, read with ``git archive``)."""
    dest = work / "src"
    for _ in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if source == "head":
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", "HEAD", "operator/qorch"],
                capture_output=True,
                check=True,
            )
            subprocess.run(
                ["tar", "-x", "-C", str(dest), "--strip-components=1"],
                input=archive.stdout,
                check=True,
            )
        else:
            shutil.copytree(
                REPO / "operator" / "qorch",
                dest / "qorch",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        env = {**os.environ, "PYTHONPATH": str(dest)}
        ok = subprocess.run([sys.executable, "-c", SMOKE], env=env, capture_output=True, text=True)
        if ok.returncode == 0:
            os.environ["PYTHONPATH"] = str(dest)
            digest = hashlib.sha256()
            for f in sorted((dest / "qorch").rglob("*.py")):
                digest.update(f.read_bytes())
            rev = ["HEAD"] if source == "head" else []
            diff = subprocess.run(
                ["git", "-C", str(REPO), "diff", *rev, "HEAD", "--", "operator"],
                capture_output=True,
                text=True,
            )
            (work / "operator.diff").write_text(diff.stdout)
            return digest.hexdigest()[:12]
        if source == "head":
            raise SystemExit(f"HEAD's operator/qorch does not import: {ok.stderr[-2000:]}")
        print(f"[chaos] operator/qorch does not import yet ({ok.stderr.strip()[-200:]}); retrying")
        time.sleep(30)
    raise SystemExit("operator/qorch never imported cleanly; run again later")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1000, help="run i uses seed + i")
    parser.add_argument("--workflows", type=int, default=5, help="workflows per run")
    parser.add_argument(
        "--horizon", type=float, default=15.0, help="faults fall in [1 s, horizon] of each run"
    )
    parser.add_argument(
        "--deadline", type=float, default=240.0, help="seconds before unfinished work is lost"
    )
    parser.add_argument(
        "--faults",
        default=",".join(chaos.FAULT_KINDS),
        help=f"comma-separated subset of {', '.join(chaos.FAULT_KINDS)}",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=10,
        help="QORCH_PEERING_LIFETIME_SECONDS of the operator (the chart's default is 60)",
    )
    parser.add_argument("--quick", action="store_true", help="2 runs of 4 workflows")
    parser.add_argument(
        "--code",
        choices=["tree", "head", "live"],
        default="tree",
        help="operator/qorch to run: a copy of the working tree taken at start (default), "
        "of the last commit, or the live tree as others edit it",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.workflows = 2, 4
    kinds = [k for k in args.faults.split(",") if k]
    unknown = set(kinds) - set(chaos.FAULT_KINDS)
    if unknown:
        parser.error(f"--faults: unknown {sorted(unknown)}; choose from {chaos.FAULT_KINDS}")

    work = Path(tempfile.mkdtemp(prefix="qorch-chaos-"))
    print(f"[chaos] work directory {work}; seeds {args.seed}..{args.seed + args.runs - 1}")
    if args.code != "live":
        digest = snapshot_code(work, args.code)
        print(f"[chaos] code: {args.code} copy of operator/qorch, sha256 {digest}")
    started = time.monotonic()
    reports: list[chaos.RunReport] = []
    plane = cp_mod.start(work / "control-plane", crds=REPO / "crds")
    print(f"[chaos] control plane up: export KUBECONFIG={plane.kubeconfig}", flush=True)
    try:
        with (
            prom_mod.running(work / "prometheus") as prom,
            chaos.stack(
                plane,
                prom,
                work / "stack",
                least_privilege_kubeconfig(plane, work / "operator-sa.yaml"),
                rng_seed=args.seed,
                peering_lifetime=args.peering_lifetime,
            ) as st,
        ):
            for i in range(args.runs):
                report = chaos.run_once(
                    st,
                    args.seed + i,
                    workflows=args.workflows,
                    horizon=args.horizon,
                    deadline=args.deadline,
                    kinds=kinds,
                )
                reports.append(report)
                (work / f"run-{report.seed}.json").write_text(
                    json.dumps(chaos.report_json(report), indent=1)
                )
                verdict = "ok" if not report.violations else f"{len(report.violations)} VIOLATIONS"
                print(
                    f"[chaos] seed {report.seed}: {len(report.subtasks)} subtasks, "
                    f"{report.wall_seconds:.1f}s, {verdict}",
                    flush=True,
                )
                for note in report.notes:
                    print(f"[chaos]   note: {note}", flush=True)
                if report.violations:
                    print(chaos.failure_report([report]), flush=True)
    finally:
        plane.stop()
    chaos.render(reports)
    print(f"[chaos] total {time.monotonic() - started:.0f}s; logs in {work}")
    failed = [r.seed for r in reports if r.violations]
    if failed:
        print(f"[chaos] invariants failed in runs {failed} (details above and in {work})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
