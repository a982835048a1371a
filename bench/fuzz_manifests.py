"""A longer run of tests/e2e/test_fuzz_manifests.py: many more fuzzed HybridWorkflow
manifests against a real control plane and a real operator (scripted gateway), with a
table of what happened to each kind.

    .venv/bin/python bench/fuzz_manifests.py [--examples 50] [--batch 10] [--seed 1]

Each example is one batch of ``--batch`` manifests applied together: 3 valid DAGs (one batch
in five also holds a workflow of 150-200 subtasks) and near-misses, the kinds taken in turn
so that every kind comes up every 6 batches. Prints, per kind
of manifest, how many were refused, succeeded, failed as invalid, failed at run time or got
stuck, and how many broke the property; writes a reproducer (manifest, status, operator log)
per violation under ``--out`` and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from devenv import controlplane  # noqa: E402
from devenv.cluster import Cluster  # noqa: E402
from devenv.rbac import least_privilege_kubeconfig  # noqa: E402
from tests.fuzz import BatchResult, Checker, Outcome  # noqa: E402
from tests.fuzz.strategies import ALL_MUTATIONS, Case, batches  # noqa: E402
from tests.harness import operator as operator_mod  # noqa: E402

OPERATOR_ENV = {"QORCH_RETRY_BACKOFF_SECONDS": "1", "QORCH_RETRY_BACKOFF_MAX_SECONDS": "2"}
SHARDS = 6  # batch n draws from every SHARDS-th kind, starting at n % SHARDS
LABELS = ("rejected", "Succeeded", "Failed:invalid", "Failed:run", "stuck")


def kind_of(case: Case) -> str:
    """Group by kind without the value details (``out-of-range:shots=0`` -> out-of-range)."""
    kind = case.kind.split(":")[0]
    if kind.startswith("workflow-name-") and kind.endswith("-chars"):
        return "workflow-name-64..253-chars"
    if kind.startswith("valid-") and kind.endswith("-subtasks"):
        return "valid-150..200-subtasks"
    return kind


def table(outcomes: list[Outcome]) -> str:
    rows: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for out in outcomes:
        counts = rows[(kind_of(out.case), out.case.expect.value)]
        counts[out.label if not out.label.startswith("stuck") else "stuck"] += 1
        counts["total"] += 1
        counts["VIOLATIONS"] += bool(out.violations)
    head = ("kind", "expect", "total", *LABELS, "VIOLATIONS")
    lines: list[tuple[str, ...]] = [head]
    for (kind, expect), counts in sorted(rows.items()):
        lines.append((kind, expect, *(str(counts[c]) for c in head[2:])))
    totals = collections.Counter[str]()
    for counts in rows.values():
        totals.update(counts)
    lines.append(("TOTAL", "", *(str(totals[c]) for c in head[2:])))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50, help="batches to run")
    parser.add_argument("--batch", type=int, default=10, help="manifests per batch")
    parser.add_argument("--seed", type=int, default=1, help="hypothesis seed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per batch")
    parser.add_argument("--out", type=Path, default=None, help="where reproducers go")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qorch-fuzz-"))
    out_dir: Path = args.out or work / "violations"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs and reproducers under {work} (reproducers: {out_dir})", flush=True)
    outcomes: list[Outcome] = []
    results: list[BatchResult] = []
    started = time.monotonic()
    plane = controlplane.start(work / "control-plane", crds=REPO / "crds")
    try:
        cluster = Cluster(plane)
        kubeconfig = least_privilege_kubeconfig(plane, work / "sa.yaml")
        with operator_mod.running(
            plane, work / "operator.log", kubeconfig=kubeconfig, extra_env=OPERATOR_ENV
        ) as op:
            checker = Checker(cluster, op, timeout=args.timeout)

            @seed(args.seed)
            @settings(
                max_examples=args.examples,
                deadline=None,
                database=None,
                phases=(Phase.generate,),
                suppress_health_check=list(HealthCheck),
                verbosity=Verbosity.quiet,
            )
            @given(data=st.data())
            def run(data: st.DataObject) -> None:
                # Kinds round-robin over the batches (Hypothesis' own choice favours the
                # first kinds); every fifth batch holds a huge workflow.
                n = len(results)
                kinds = ALL_MUTATIONS[n % SHARDS :: SHARDS]
                batch: list[Case] = data.draw(
                    batches(size=args.batch, mutations=kinds, huge=n % 5 == 0), label="batch"
                )
                result = checker.run(batch, hint=f"fuzz-b{len(results)}")
                results.append(result)
                outcomes.extend(result.outcomes)
                bad = len(result.failures) + len(result.operator_violations)
                print(
                    f"batch {len(results)}: {len(batch)} manifests, {bad} violations "
                    f"({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
                if bad:
                    path = out_dir / f"batch-{len(results):04d}.txt"
                    path.write_text(result.report() + "\n")

            run()
    finally:
        plane.stop()

    print()
    print(table(outcomes))
    operator_problems = [v for r in results for v in r.operator_violations]
    violations = sum(bool(o.violations) for o in outcomes) + len(operator_problems)
    print(
        f"\n{len(outcomes)} manifests in {len(results)} batches, "
        f"{time.monotonic() - started:.0f}s; {violations} violations"
        + (f"; reproducers in {out_dir}" if violations else "")
    )
    for problem in operator_problems:
        print(f"OPERATOR: {problem[:500]}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
