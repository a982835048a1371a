"""The Grafana dashboard (``deploy/grafana/qorch-dashboard.json``) against the metric catalogue
and a real Prometheus.

- statically: every panel query names only metrics that Qorch's registries define
  (``GatewayMetrics``, ``WorkerMetrics``, ``qorch.metrics.operator_metrics``: read from the
  definitions, not from a hand list), as the exporter writes them (``_total``, ``_bucket``),
  and only labels those metrics carry or a scrape adds;
- live: a real Prometheus scrapes a real gateway and a real worker (as
  ``test_metrics_pipeline`` runs them), a few jobs go through the gateway, and every query of
  the dashboard, template variables substituted as Grafana would, is accepted by
  ``/api/v1/query``. Every query over gateway and worker metrics must return data; the
  operator's are only parsed and evaluated (no operator runs here)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from devenv import gateway as gateway_mod
from devenv.cluster import wait_for
from devenv.controlplane import REPO, free_port
from devenv.prometheus import Prometheus
from qorch.metrics import operator_metrics
from qorch.metrics.exporters import GatewayMetrics, WorkerMetrics
from tests.integration.test_metrics_pipeline import GHZ, post

DASHBOARD = REPO / "deploy" / "grafana" / "qorch-dashboard.json"
# Grafana's own variables, as the test sends them (the dashboard's are set per run).
BUILTINS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
# Labels the scrape adds (file_sd, ServiceMonitor, pod annotations), not the exporter.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
)
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")

# The live run: what the test's targets are labelled with, as a Prometheus scraping a
# cluster would label them.
NAMESPACE = "qorch-dashboard"
WORKFLOW_NAMESPACE = "qorch-dashboard-workflows"
QUANTUM_BACKEND = "dashboard-device"
JOBS = 4


@dataclass(frozen=True)
class Family:
    """One exported sample name (``qorch_gateway_jobs_total``), from one registry."""

    sample: str
    labels: frozenset[str]
    source: str  # gateway, worker or operator


def _collectors(holder: object) -> Iterator[MetricWrapperBase]:
    if dataclasses.is_dataclass(holder):
        values = [getattr(holder, f.name) for f in dataclasses.fields(holder)]
    else:
        values = list(vars(holder).values())
    yield from (v for v in values if isinstance(v, MetricWrapperBase))


def catalogue() -> dict[str, Family]:
    """Every sample name Qorch exports, by the process that exports it, read from the
    registry definitions (a gateway told its QuantumBackend: the widest label set)."""
    sources: dict[str, object] = {
        "gateway": GatewayMetrics.create(quantum_backend="catalogue"),
        "worker": WorkerMetrics.create(),
        "operator": operator_metrics,
    }
    out: dict[str, Family] = {}
    for source, holder in sources.items():
        for collector in _collectors(holder):
            labels = frozenset(collector._labelnames)
            for family in collector.collect():
                for suffix in SAMPLE_SUFFIXES[family.type]:
                    extra = {"le"} if suffix == "_bucket" else set()
                    name = family.name + suffix
                    out[name] = Family(name, labels | extra, source)
    return out


def load() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, including those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def targets(board: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", [])]


def variables(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [v for v in board["templating"]["list"] if v["type"] != "datasource"]


@dataclass(frozen=True)
class Parsed:
    metrics: frozenset[str]
    selectors: tuple[tuple[str, frozenset[str]], ...]  # (metric, labels it matches on)
    grouping: frozenset[str]  # labels of every by/without/on/ignoring clause


def parse(expr: str) -> Parsed:
    """Metric names and labels of a PromQL expression (enough PromQL for dashboards:
    selectors, ranges, functions, aggregations, binary operators)."""
    selectors = tuple(
        (m.group(1), frozenset(MATCHER.findall(m.group(2))))
        for m in SELECTOR.finditer(expr)
        if m.group(1)
    )
    bare = re.sub(r"\[[^\]]*\]", " ", re.sub(r"\{[^}]*\}", " ", expr))
    grouping = frozenset(
        label.strip() for m in GROUPING.finditer(bare) for label in m.group(1).split(",")
    ) - {""}
    bare = GROUPING.sub(" ", bare)
    metrics = frozenset(
        m.group(1) for m in IDENT.finditer(bare) if not m.group(2) and m.group(1) not in KEYWORDS
    )
    return Parsed(metrics, selectors, grouping)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """The expression as Grafana sends it: its own variables and the dashboard's."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)

    def lookup(m: re.Match[str]) -> str:
        return values[m.group(1) or m.group(2)]

    return VARIABLE.sub(lookup, expr)


def api(prom: Prometheus, path: str, params: Mapping[str, str]) -> dict[str, Any]:
    """Prometheus' answer, refusals (400 bad_data) included."""
    url = f"{prom.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


# ---- static --------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_over_a_datasource_variable() -> None:
    board = load()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    datasource = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in datasource] == [("datasource", "prometheus")]
    names = {v["name"] for v in variables(board)}
    assert {"namespace", "quantum_backend"} <= names
    for var in variables(board):
        # "All" must also match series without the label (a hand-run gateway has no
        # quantum_backend): a regex, never Grafana's default alternation of the values.
        assert var["includeAll"] and var["allValue"] == ".*", var["name"]
        assert var["datasource"]["uid"] == "${datasource}", var["name"]
    every = board["panels"] + [q for p in board["panels"] for q in p.get("panels", [])]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    boxes: list[tuple[str, dict[str, int]]] = []
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for title, other in boxes:
            overlap = (
                pos["x"] < other["x"] + other["w"]
                and other["x"] < pos["x"] + pos["w"]
                and pos["y"] < other["y"] + other["h"]
                and other["y"] < pos["y"] + pos["h"]
            )
            assert not overlap, f"{panel['title']!r} overlaps {title!r}"
        boxes.append((panel["title"], pos))
    for panel in panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_uses_only_metrics_and_labels_of_the_catalogue() -> None:
    board = load()
    known = catalogue()
    declared = {v["name"] for v in variables(board)}
    assert targets(board)
    for title, target in targets(board):
        expr = target["expr"]
        where = f"{title!r}: {expr}"
        parsed = parse(expr)
        assert parsed.metrics, where
        unknown = sorted(parsed.metrics - known.keys())
        assert not unknown, f"{where}: not in the catalogue: {unknown}"
        for metric, labels in parsed.selectors:
            extra = labels - known[metric].labels - TARGET_LABELS
            assert not extra, f"{where}: {metric} has no label {sorted(extra)}"
        allowed = TARGET_LABELS.union(*(known[m].labels for m in parsed.metrics))
        assert parsed.grouping <= allowed, f"{where}: {sorted(parsed.grouping - allowed)}"
        shown = set(LEGEND.findall(target.get("legendFormat", "")))
        visible = (parsed.grouping - {"le"}) if parsed.grouping else allowed
        assert shown <= visible, f"{where}: legend shows {sorted(shown - visible)}"
        undeclared = {m.group(1) or m.group(2) for m in VARIABLE.finditer(expr)} - declared
        undeclared -= {name[1:] for name in BUILTINS}
        assert not undeclared, f"{where}: no variable {sorted(undeclared)}"
    for var in variables(board):
        m = LABEL_VALUES.match(var["definition"])
        assert m and var["query"]["query"] == var["definition"], var["name"]
        names = parse(m.group(1)).metrics
        assert len(names) == 1 and names <= known.keys(), var["definition"]
        (name,) = names
        assert m.group(2) in known[name].labels | TARGET_LABELS, var["definition"]


# ---- live ----------------------------------------------------------------------------


@pytest.mark.prometheus
def test_every_dashboard_query_runs_on_prometheus_scraping_a_gateway_and_a_worker(
    prometheus: Prometheus, session_dir: Path
) -> None:
    board = load()
    known = catalogue()
    everything = {v["name"]: ".*" for v in variables(board)}
    chosen = {
        **everything,
        "namespace": NAMESPACE,
        "quantum_backend": QUANTUM_BACKEND,
        "workflow_namespace": WORKFLOW_NAMESPACE,
    }
    with gateway_mod.running(
        session_dir / "gateway-dashboard.log",
        "--provider",
        "fake",
        "--backend",
        "fake_manila",
        "--quantum-backend",
        QUANTUM_BACKEND,
        "--batch-size",
        "1",
        # Held and billed device seconds: a queue that lasts a moment, and a cost.
        "--min-job-seconds",
        "0.3",
        "--bill-held-seconds",
        "--price-per-qpu-second",
        "1.6",
    ) as gw:
        prometheus.set_targets(
            "dashboard-gateway", [f"127.0.0.1:{gw.port}"], {"namespace": NAMESPACE}
        )
        worker_port = free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "qorch.cli", "worker"],
            env={
                **os.environ,
                "QORCH_QASM": GHZ,
                "QORCH_METRICS_PORT": str(worker_port),
                "QORCH_METRICS_ADDR": "127.0.0.1",
                "QORCH_METRICS_LINGER_SECONDS": "90",
                "QORCH_RESULT_PATH": str(session_dir / "dashboard-worker-result.json"),
                "QORCH_GATEWAY_URL": gw.url,
                "QORCH_NODE_PRICE_USD_PER_SECOND": "0.0002",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            prometheus.set_targets(
                "dashboard-worker", [f"127.0.0.1:{worker_port}"], {"namespace": WORKFLOW_NAMESPACE}
            )
            ids = [f"dash{i}" for i in range(JOBS)]
            for i, job_id in enumerate(ids):
                job = {"job_id": job_id, "backend": "fake_manila", "qasm": GHZ}
                post(f"{gw.url}/v1/jobs", {**job, "shots": 100 + i})
            wait_for(
                "the gateway's jobs done",
                lambda: all(
                    j["phase"] == "Done"
                    for j in post(f"{gw.url}/v1/jobs/status", {"job_ids": ids})["jobs"]
                ),
                120,
            )

            def scraped() -> bool:
                done = prometheus.query(
                    f'sum(qorch_gateway_jobs_total{{namespace="{NAMESPACE}", outcome="done"}})'
                )
                runs = prometheus.query(
                    f'qorch_worker_runs_total{{namespace="{WORKFLOW_NAMESPACE}"}}'
                )
                return bool(done and float(done[0]["value"][1]) == JOBS and runs)

            wait_for("the jobs and the worker's run in Prometheus", scraped, 60, interval=0.5)
            time.sleep(2)  # two more scrapes after the last change: rate() has its samples
            accepted: dict[str, str] = {}
            answered: dict[str, list[str]] = {}
            for title, target in targets(board):
                for values in (everything, chosen):
                    query = substitute(target["expr"], values)
                    body = api(prometheus, "/api/v1/query", {"query": query})
                    assert body["status"] == "success", f"{title!r}: {query}: {body}"
                    accepted[query] = body["data"]["resultType"]
                    if values is chosen:
                        series = body["data"]["result"]
                        answered[f"{title} [{target['refId']}]"] = [s["value"][1] for s in series]
            labels: dict[str, list[str]] = {}
            for var in variables(board):
                m = LABEL_VALUES.match(var["definition"])
                assert m, var["name"]
                match = substitute(m.group(1), everything)
                body = api(prometheus, f"/api/v1/label/{m.group(2)}/values", {"match[]": match})
                assert body["status"] == "success", f"{var['name']}: {body}"
                labels[var["name"]] = list(body["data"])
        finally:
            worker.kill()
            worker.wait(5)
            prometheus.set_targets("dashboard-gateway", [])
            prometheus.set_targets("dashboard-worker", [])
    assert set(accepted.values()) == {"vector"}
    # What the traffic above must show: every query over gateway and worker metrics, for
    # the namespace, QuantumBackend and workflow namespace the variables offer.
    assert NAMESPACE in labels["namespace"]
    assert QUANTUM_BACKEND in labels["quantum_backend"]
    assert WORKFLOW_NAMESPACE in labels["workflow_namespace"]
    empty = []
    for title, target in targets(board):
        sources = {known[m].source for m in parse(target["expr"]).metrics}
        if sources <= {"gateway", "worker"} and not answered[f"{title} [{target['refId']}]"]:
            empty.append(f"{title!r}: {target['expr']}")
    assert not empty, "no data for:\n" + "\n".join(empty)
    print("\nvalues per query (variables set):")
    for name, found in answered.items():
        print(f"  {name}: {', '.join(found) or '-'}")
