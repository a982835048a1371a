"""What each kind of API request costs the control plane, and the floor that puts under
``bench/scale.py``'s ratio on the machine it runs on (issue 16).

    .venv/bin/python bench/apiserver_cost.py [--requests 1000] [--rounds 2]
        [--scale-json PATH] [--json PATH]

On the test control plane every process shares the machine's cores, so a phase of
``bench/scale.py`` that keeps them all busy (its "cores busy" column) lasts about as long
as the CPU it costs. The Qorch phase sends the requests the scheduler phase sends (pod
creates, bindings, KWOK's status writes) and more: the workflows' applies, their status
writes, Qorch's Events. What those extra requests cost the apiserver and etcd is paid
whatever the operator does with its own CPU, so it bounds the ratio from below.

ONE control plane (``devenv/controlplane.py``, the same nodes and CRDs as
``bench/scale.py``); no operator, no scheduler work (pods are created with a scheduler
name nobody serves). Each kind is sent with ``--concurrency`` (16) in flight, ``--rounds``
times; the cheapest round counts (the others met Go's garbage collector or a compaction).
For each: the CPU seconds of kube-apiserver and etcd (psutil) per request:

- ``APPLY hybridworkflows``: the server-side apply of a workflow of 1, 10 and 100
  subtasks (``--subtasks``; ``bench/scale.py``'s manifest), ``--requests`` / size times
  (at least 20);
- ``PATCH hybridworkflows status``: a merge patch of such a workflow's status as the
  operator writes it (conditions; each subtask with its placement, pod, two history
  entries and prediction; a finished subtask has four entries, so the price errs low, as
  a floor may), built from ``qorch.api``, in turn with two values so that each write
  changes the stored object; as many times;
- ``POST events``: a Normal Event about a workflow, as Kopf posts them, ``--requests``
  times;
- ``POST pods`` and ``PATCH pods status``: for scale, the pod create and the pod status
  write both phases pay (KWOK's), ``--requests`` times.

With ``--scale-json`` (a ``bench/scale.py --json`` file), per shape: the requests only
Qorch sends (the workflows' applies and status writes, and the Events beyond the
scheduler phase's, counted only where neither phase replayed background pods, whose
scheduler Events would count too), their cost at these prices (the price of the shape's
workflow size: measured, or interpolated between the sizes measured), and two floors of
the ratio "done" on that machine: the scheduler phase's CPU plus what those requests
cost, over the scheduler phase's CPU (an operator that costs nothing), and the same plus
the operator's measured CPU. Pod requests are left out (both phases send them for the
same pods). Both floors hold only where the scheduler phase kept the cores busy (it
says so). A floor above 1.25 says that no change to the operator's own code meets the
target there: only fewer or cheaper requests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from qorch.api.meta import Condition  # noqa: E402
from qorch.api.workflow import (  # noqa: E402
    HistoryEntry,
    HybridWorkflowStatus,
    Placement,
    PredictedOutcome,
    ResourceKind,
    SubtaskPhase,
    SubtaskStatus,
    WorkflowPhase,
)

NOW = "2026-11-27T00:00:00Z"
# The request kinds priced here, named as bench/scale.py's api_breakdown names them.
APPLY_WORKFLOW = "APPLY hybridworkflows"
PATCH_STATUS = "PATCH hybridworkflows status"
POST_EVENT = "POST events"
POST_POD = "POST pods"
PATCH_POD_STATUS = "PATCH pods status"
# What the scheduler phase does not send, or sends less of (Events: one per pod bound).
QORCH_ONLY = (APPLY_WORKFLOW, PATCH_STATUS, POST_EVENT)
RUNNING, SCHEDULED = SubtaskPhase.RUNNING, SubtaskPhase.SCHEDULED
MIN_REQUESTS = 20  # of the workflow's own kinds, however large its workflows


def workflow_status(index: int, phase: SubtaskPhase, subtasks: int) -> dict[str, Any]:
    """The status of a workflow of ``subtasks`` subtasks as the operator writes it, valid
    against the CRD."""
    status = HybridWorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        observedGeneration=1,
        progress="0/1",
        startedAt=NOW,
        conditions=[
            Condition(
                type=kind,
                status="True",
                reason="Reason",
                message="a sentence of about the length the operator writes here",
                lastTransitionTime=NOW,
                observedGeneration=1,
            )
            for kind in ("Predicted", "Valid", "Ready")
        ],
        subtasks=[
            SubtaskStatus(
                name=f"s{j:03d}",
                phase=phase,
                attempts=1,
                placement=Placement(kind=ResourceKind.POOL, name="cpu"),
                podName=f"wf-{index:04d}-s{j:03d}-1",
                launchedAt=NOW,
                history=[
                    HistoryEntry(time=NOW, event="Placed", message="on pool cpu by the rule"),
                    HistoryEntry(time=NOW, event=phase.value, message="pod on kwok-cpu-3"),
                ],
                predicted=PredictedOutcome(
                    source="analytic",
                    queueSecondsP10=0.0,
                    queueSecondsP50=0.0,
                    queueSecondsP90=0.0,
                    runSeconds=1.0,
                    fidelity=1.0,
                    costUSD=0.0,
                ),
            )
            for j in range(subtasks)
        ],
    )
    return {"status": status.model_dump(mode="json", exclude_none=True)}


def event(namespace: str, index: int) -> dict[str, Any]:
    return {
        "metadata": {"generateName": f"wf-{index:04d}."},
        "involvedObject": {
            "apiVersion": "qorch.io/v1alpha1",
            "kind": "HybridWorkflow",
            "name": f"wf-{index:04d}",
            "namespace": namespace,
        },
        "reason": "Placed",
        "message": "s000 on pool cpu (the rule: a CPU-only classical step)",
        "type": "Normal",
        "source": {"component": "kopf"},
        "firstTimestamp": NOW,
        "lastTimestamp": NOW,
        "count": 1,
    }


def expect(status: int, doc: Any, *ok: int) -> None:
    if status not in ok:
        raise RuntimeError(f"{status}: {str(doc)[:300]}")


def measure(
    api: scale.Api,
    pids: dict[str, int],
    requests: int,
    concurrency: int,
    send: Callable[[int], None],
) -> tuple[float, float]:
    """(apiserver + etcd CPU seconds per request, wall seconds) of ``requests`` sends."""
    before = scale.process_cpu(pids)
    started = time.monotonic()
    scale.run_bounded(concurrency, list(range(requests)), send)
    wall = time.monotonic() - started
    delta = scale.cpu_delta(before, scale.process_cpu(pids))
    cpu = delta.get("kube-apiserver", 0.0) + delta.get("etcd", 0.0)
    return cpu / requests, wall


def price_requests(args: argparse.Namespace, console: Console) -> dict[str, dict[int, float]]:
    """Milliseconds of apiserver + etcd CPU per request, per kind and, for the workflow's
    own requests, per size (subtasks per workflow); the cheapest round of each."""
    keep = args.workdir is not None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="qorch-apicost-"))).resolve()
    shutil.rmtree(workdir / "control-plane", ignore_errors=True)
    plane = scale.cp_mod.start(workdir / "control-plane", nodes=scale.NODES, crds=REPO / "crds")
    prices: dict[str, dict[int, float]] = {}

    def record(kind: str, size: int, per_request: float, wall: float, round_: int) -> None:
        ms = 1000 * per_request
        console.print(f"round {round_ + 1}: {kind} ({size}): {ms:.2f} ms per request ({wall:.1f}s)")
        by_size = prices.setdefault(kind, {})
        by_size[size] = min(by_size.get(size, ms), ms)

    try:
        api = scale.Api(plane)
        pids = {k: v for k, v in scale.plane_pids(plane).items() if k in ("kube-apiserver", "etcd")}
        apply_query = urlencode({"fieldManager": "qorch-bench", "force": "true"})
        for round_ in range(args.rounds):
            for size in args.subtasks:
                ns = f"cost-{round_}-{size}"
                scale.create_namespace(api, ns)
                flows = f"{scale.GROUP_PATH}/namespaces/{ns}/hybridworkflows"
                # As many workflows as keep the bytes sent about the same for every size.
                n = max(args.requests // size, MIN_REQUESTS)

                def apply(i: int, flows: str = flows, size: int = size) -> None:
                    manifest = scale.workflow_manifest(f"wf-{i:04d}", size)
                    path = f"{flows}/wf-{i:04d}?{apply_query}"
                    answer = api.call("PATCH", path, manifest, "application/apply-patch+yaml")
                    expect(*answer, 200, 201)

                def patch_status(
                    i: int, flows: str = flows, size: int = size, phase: SubtaskPhase = RUNNING
                ) -> None:
                    body = workflow_status(i, phase, size)
                    path = f"{flows}/wf-{i:04d}/status"
                    expect(*api.call("PATCH", path, body, "application/merge-patch+json"), 200)

                sized: list[tuple[str, Callable[[int], None]]] = [
                    (APPLY_WORKFLOW, apply),
                    (PATCH_STATUS, patch_status),
                    # Each write changes the stored status, as the operator's do.
                    (PATCH_STATUS, lambda i, p=patch_status: p(i, phase=SCHEDULED)),
                ]
                for kind, send in sized:
                    per_request, wall = measure(api, pids, n, args.concurrency, send)
                    record(kind, size, per_request, wall, round_)
                scale.delete_namespaces(api, [ns])
            ns = f"cost-{round_}"
            scale.create_namespace(api, ns)

            def post_event(i: int, ns: str = ns) -> None:
                expect(*api.call("POST", f"/api/v1/namespaces/{ns}/events", event(ns, i)), 201)

            def post_pod(i: int, ns: str = ns) -> None:
                pod = scale.baseline_pod(ns, i)
                pod["spec"]["schedulerName"] = "nobody"  # stays Pending: nothing else runs
                expect(*api.call("POST", f"/api/v1/namespaces/{ns}/pods", pod), 201)

            def patch_pod_status(i: int, ns: str = ns) -> None:
                name = scale.baseline_pod(ns, i)["metadata"]["name"]
                body = {"status": {"conditions": [{"type": "PodScheduled", "status": "False"}]}}
                path = f"/api/v1/namespaces/{ns}/pods/{name}/status"
                answer = api.call("PATCH", path, body, "application/strategic-merge-patch+json")
                expect(*answer, 200)

            for kind, send in ((POST_EVENT, post_event), (POST_POD, post_pod),
                               (PATCH_POD_STATUS, patch_pod_status)):  # fmt: skip
                per_request, wall = measure(api, pids, args.requests, args.concurrency, send)
                record(kind, 1, per_request, wall, round_)
            scale.delete_namespaces(api, [ns])
    finally:
        plane.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return prices


def price_at(by_size: dict[int, float], size: int) -> float:
    """The price of a request for a workflow of ``size`` subtasks: measured there, else
    interpolated linearly between the sizes measured around it (the nearest one outside
    them); a kind priced once costs the same for every size."""
    sizes = sorted(by_size)
    if size in by_size or len(sizes) == 1:
        return by_size.get(size, by_size[sizes[0]])
    if size <= sizes[0]:
        return by_size[sizes[0]]
    if size >= sizes[-1]:
        return by_size[sizes[-1]]
    above = next(k for k in sizes if k > size)
    below = max(k for k in sizes if k < size)
    share = (size - below) / (above - below)
    return by_size[below] + share * (by_size[above] - by_size[below])


def floors(prices: dict[str, dict[int, float]], scale_json: Path) -> list[dict[str, Any]]:
    """Per shape of a bench/scale.py run: the extra requests' cost and the ratio's floors."""
    doc = json.loads(scale_json.read_text())
    cores = (doc.get("machine") or {}).get("cpus")
    rows = []
    for result in doc["results"]:
        sched, qorch = result["scheduler"], result["qorch"]
        size = int(result["subtasks"])
        extra = {
            kind: qorch["api_breakdown"].get(kind, 0) - sched["api_breakdown"].get(kind, 0)
            for kind in QORCH_ONLY
        }
        if sched.get("background_pods") or qorch.get("background_pods"):
            extra.pop(POST_EVENT)  # the background pods' scheduler Events would count too
        extra_cpu = sum(
            max(count, 0) * price_at(prices[kind], size) / 1000 for kind, count in extra.items()
        )
        sched_cpu = sum(sched["cpu_s_by_process"].values())
        sched_wall = sched["all_succeeded_s"]
        operator_cpu = qorch.get("operator_cpu_s") or 0.0
        rows.append(
            {
                "shape": result["shape"],
                "pods": result["pods"],
                "subtasks": size,
                "extra_requests": extra,
                "extra_request_cpu_s": round(extra_cpu, 2),
                "scheduler_cpu_s": round(sched_cpu, 2),
                "scheduler_cores_busy": round(sched_cpu / sched_wall, 2) if sched_wall else None,
                "cores": cores,
                "operator_cpu_s": operator_cpu,
                "floor_without_operator": round((sched_cpu + extra_cpu) / sched_cpu, 2),
                "floor_with_operator": round((sched_cpu + extra_cpu + operator_cpu) / sched_cpu, 2),
                "measured_ratio_done": result.get("ratio_succeeded"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per kind per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--subtasks",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[1, 10, 100],
        help="workflow sizes the apply and the status write are priced at (1,10,100)",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scale-json", type=Path, help="a bench/scale.py --json file")
    parser.add_argument("--workdir", type=Path, help="control plane and logs (kept)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    console = Console(width=160)
    prices = price_requests(args, console)
    table = Table(title="apiserver + etcd CPU per request, ms (cheapest round)")
    table.add_column("request")
    sizes = sorted({k for by_size in prices.values() for k in by_size})
    for size in sizes:
        table.add_column(f"{size} subtask{'s' if size > 1 else ''}", justify="right")
    for kind, by_size in prices.items():
        table.add_row(kind, *(f"{by_size[k]:.2f}" if k in by_size else "" for k in sizes))
    console.print(table)
    out: dict[str, Any] = {
        "benchmark": "apiserver_cost",
        "prices_ms": {kind: {str(k): v for k, v in by.items()} for kind, by in prices.items()},
    }
    if args.scale_json is not None:
        rows = floors(prices, args.scale_json)
        out["floors"] = rows
        shapes = Table(title=f"floors of the ratio 'done' on the machine of {args.scale_json.name}")
        for column in (
            "shape", "extra req/pod", "their CPU s", "sched CPU s", "sched cores busy",
            "op CPU s", "floor, free operator", "floor, measured operator", "measured",
        ):  # fmt: skip
            shapes.add_column(column, justify="left" if column == "shape" else "right")
        for row in rows:
            per_pod = sum(max(v, 0) for v in row["extra_requests"].values()) / row["pods"]
            shapes.add_row(
                row["shape"],
                f"{per_pod:.2f}",
                f"{row['extra_request_cpu_s']:.1f}",
                f"{row['scheduler_cpu_s']:.1f}",
                f"{row['scheduler_cores_busy']} of {row['cores']}",
                f"{row['operator_cpu_s']:.1f}",
                f"{row['floor_without_operator']:.2f}",
                f"{row['floor_with_operator']:.2f}",
                f"{row['measured_ratio_done']}",
            )
        console.print(shapes)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
