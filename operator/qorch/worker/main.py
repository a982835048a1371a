"""``qorch worker``: the entrypoint of classical subtask pods.

Circuit mode (no command given): simulate ``QORCH_QASM`` with qiskit-aer, choosing the
method from the circuit (statevector up to ``simulation.STATEVECTOR_MAX_QUBITS``, else
matrix_product_state; the operator sizes the pod by the same rule and sets
``QORCH_METHOD``) and the device from the node (GPU when Aer sees one and the method
runs there). Command mode (``qorch worker -- CMD ...``): run the user's command and
report on it. Variational mode (``QORCH_VARIATIONAL`` set): optimise a parametrised
ansatz, batch by batch, on the route the operator assigns (``qorch.worker.variational``).

The result goes to the termination message (``QORCH_RESULT_PATH``, default
``/dev/termination-log``), which Kubernetes caps at 4096 bytes: the operator copies it
into the workflow's status. Larger sampler results keep their most frequent outcomes and
say so (``truncated``, ``distinctOutcomes``). Every result carries ``usage`` (wall and
CPU seconds, peak memory, method, device): short runs end before any scrape, so this is
how the operator learns what a run took. ``QORCH_METRICS_PORT`` also serves /metrics.

Exit codes: 0 success; 2 bad input (the message names the variable); 3 simulation
failed; a command's own code in command mode.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qorch.metrics.exporters import WorkerMetrics
from qorch.orchestrator.simulation import (
    MATRIX_PRODUCT_STATE,
    STATEVECTOR,
    TERMINATION_MESSAGE_LIMIT_BYTES,
    runs_on_gpu,
    simulation_method,
)
from qorch.worker.errors import BadInputError
from qorch.worker.variational import Evaluator, Progress, Terminated, VariationalTask, optimise

RESULT_LIMIT_BYTES = TERMINATION_MESSAGE_LIMIT_BYTES
EXIT_BAD_INPUT = 2
EXIT_SIMULATION_FAILED = 3
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


@dataclass(frozen=True)
class CircuitTask:
    qasm: str
    primitive: str
    shots: int
    observables: tuple[str, ...]
    method: str
    device: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> CircuitTask:
        qasm = env.get("QORCH_QASM", "")
        if not qasm.strip():
            raise BadInputError("QORCH_QASM is empty: no circuit to run")
        primitive = env.get("QORCH_PRIMITIVE", "sampler")
        if primitive not in ("sampler", "estimator"):
            raise BadInputError(f"QORCH_PRIMITIVE={primitive!r}: expected sampler or estimator")
        try:
            shots = int(env.get("QORCH_SHOTS", "1024"))
        except ValueError:
            raise BadInputError(
                f"QORCH_SHOTS={env.get('QORCH_SHOTS')!r} is not an integer"
            ) from None
        try:
            observables = tuple(json.loads(env.get("QORCH_OBSERVABLES", "[]") or "[]"))
        except json.JSONDecodeError as exc:
            raise BadInputError(f"QORCH_OBSERVABLES is not a JSON list: {exc}") from None
        method = env.get("QORCH_METHOD", "auto")
        if method not in ("auto", STATEVECTOR, MATRIX_PRODUCT_STATE):
            raise BadInputError(
                f"QORCH_METHOD={method!r}: expected auto, statevector or matrix_product_state"
            )
        device = env.get("QORCH_DEVICE", "auto")
        if device not in ("auto", "CPU", "GPU"):
            raise BadInputError(f"QORCH_DEVICE={device!r}: expected auto, CPU or GPU")
        return cls(qasm, primitive, shots, observables, method, device)


def choose_method(num_qubits: int, requested: str) -> str:
    if requested != "auto":
        return requested
    return simulation_method(num_qubits)


def choose_device(requested: str, available: tuple[str, ...], method: str = STATEVECTOR) -> str:
    if requested == "GPU" and "GPU" not in available:
        raise BadInputError("QORCH_DEVICE=GPU but this node's Aer sees no GPU")
    if requested == "GPU" and not runs_on_gpu(method):
        raise BadInputError(f"QORCH_DEVICE=GPU but Aer runs {method} on the CPU only")
    if requested == "auto":
        return "GPU" if "GPU" in available and runs_on_gpu(method) else "CPU"
    return requested


def simulate(task: CircuitTask, metrics: WorkerMetrics) -> dict[str, Any]:
    from qiskit import transpile
    from qiskit.quantum_info import SparsePauliOp
    from qiskit_aer import AerSimulator
    from qiskit_aer.primitives import EstimatorV2, SamplerV2

    from qorch.quantum.circuits import CircuitError, load_qasm
    from qorch.quantum.results import estimator_result, sampler_result

    try:
        circuit = load_qasm(task.qasm)
    except CircuitError as exc:
        raise BadInputError(f"QORCH_QASM: {exc}") from None
    method = choose_method(circuit.num_qubits, task.method)
    device = choose_device(task.device, tuple(AerSimulator().available_devices()), method)
    options = {"method": method, "device": device}
    backend = AerSimulator(**options)
    started = time.perf_counter()
    if task.primitive == "sampler":
        if circuit.num_clbits == 0:
            raise BadInputError("QORCH_QASM: a sampler circuit needs measurements")
        isa = transpile(circuit, backend, optimization_level=1)
        sampler = SamplerV2(default_shots=task.shots, options={"backend_options": options})
        result = sampler_result(sampler.run([isa]).result()[0])
    else:
        for obs in task.observables:
            if len(obs) != circuit.num_qubits or set(obs) - set("IXYZ"):
                raise BadInputError(
                    f"QORCH_OBSERVABLES: {obs!r} must be {circuit.num_qubits} letters of IXYZ"
                )
        bare = circuit.remove_final_measurements(inplace=False)
        isa = transpile(bare, backend, optimization_level=1)
        ops = [SparsePauliOp(o).apply_layout(isa.layout) for o in task.observables]
        # Precision 0: exact expectation values of the ideal state (shots do not apply).
        estimator = EstimatorV2(options={"backend_options": options, "default_precision": 0.0})
        result = estimator_result(estimator.run([(isa, ops)]).result()[0], task.observables)
    elapsed = time.perf_counter() - started
    metrics.execution.labels(method=method, device=device).observe(elapsed)
    result.update(
        method=method, device=device, seconds=round(elapsed, 6), qubits=circuit.num_qubits
    )
    return result


def fit_result(result: dict[str, Any], limit: int = RESULT_LIMIT_BYTES) -> str:
    """JSON of ``result`` within ``limit`` bytes, always valid and always keeping ``usage``:
    sampler counts drop their rarest outcomes, long texts keep their ends."""
    text = _dumps(result)
    if _fits(text, limit):
        return text
    counts = result.get("counts")
    if isinstance(counts, dict):
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = len(ordered)
        while keep > 0:
            keep = keep * 3 // 4
            trimmed = {
                **result,
                "counts": dict(ordered[:keep]),
                "truncated": True,
                "distinctOutcomes": result.get("distinctOutcomes", len(ordered)),
            }
            text = _dumps(trimmed)
            if _fits(text, limit):
                return text
        last: dict[str, Any] = {"truncated": True, "distinctOutcomes": len(ordered)}
    else:
        # Command output tails (non-ASCII text grows up to 6x as JSON escapes): halve the
        # longest text, keeping its end, until the document fits.
        trimmed = dict(result)
        while True:
            texts = [k for k, v in trimmed.items() if isinstance(v, str) and v]
            if not texts:
                break
            longest = max(texts, key=lambda k: len(trimmed[k]))
            trimmed[longest] = trimmed[longest][len(trimmed[longest]) // 2 + 1 :]
            trimmed["truncated"] = True
            text = _dumps(trimmed)
            if _fits(text, limit):
                return text
        last = {"truncated": True}
    if isinstance(result.get("usage"), dict):
        last["usage"] = result["usage"]
    return _dumps(last)


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _fits(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit


def run_command(command: list[str], metrics: WorkerMetrics) -> tuple[int, dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    metrics.execution.labels(method="command", device="CPU").observe(elapsed)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode, {
        "exitCode": proc.returncode,
        "seconds": round(elapsed, 6),
        "stdoutTail": proc.stdout[-1024:],
        "stderrTail": proc.stderr[-1024:],
    }


def _gateway_latency(url: str, metrics: WorkerMetrics) -> None:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5):
            pass
    except OSError:
        return
    metrics.gateway_latency.observe(time.perf_counter() - started)


def _own_peak_kib(fallback: int) -> int:
    """This process's own peak RSS (VmHWM). ``ru_maxrss`` also counts the memory of the
    process that spawned it (Linux carries the parent's high-water mark across a vfork +
    exec), so a worker started from a large process would report that process's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return fallback


@dataclass(frozen=True)
class Usage:
    """What this process (and a command it ran) used so far."""

    cpu_seconds: float
    peak_memory_bytes: int

    @classmethod
    def measure(cls) -> Usage:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            cpu_seconds=own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            # KiB on Linux; a command's peak is its own (the child's).
            peak_memory_bytes=max(_own_peak_kib(own.ru_maxrss), children.ru_maxrss) * 1024,
        )

    def summary(self, wall_seconds: float, method: str, device: str) -> dict[str, Any]:
        """The ``usage`` entry of a result: compact, it must fit beside the result."""
        return {
            "wallSeconds": round(wall_seconds, 3),
            "cpuSeconds": round(self.cpu_seconds, 3),
            "peakMemoryBytes": self.peak_memory_bytes,
            "method": method,
            "device": device,
        }


def _record_usage(metrics: WorkerMetrics) -> Usage:
    usage = Usage.measure()
    metrics.peak_memory.set(usage.peak_memory_bytes)
    metrics.cpu_seconds.inc(usage.cpu_seconds)
    try:
        import pynvml  # type: ignore[import-not-found]  # optional: GPU nodes only

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        metrics.gpu_utilisation.set(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
    except Exception:  # no NVML, no GPU: the gauge stays absent
        pass
    return usage


class _Handler(BaseHTTPRequestHandler):
    """/metrics for Prometheus, /progress (JSON) for the operator (variational loops)."""

    metrics: WorkerMetrics
    progress: Progress | None = None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, kind = generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
        elif path == "/progress" and self.progress is not None:
            body = json.dumps(self.progress.snapshot()).encode()
            kind = "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per scrape would drown the pod's log


def _serve(port: int, addr: str, metrics: WorkerMetrics, progress: Progress | None) -> bool:
    """Serve /metrics (and /progress); a port that is taken costs the scrape, never the run
    (the result carries the usage anyway)."""
    handler = type("Handler", (_Handler,), {"metrics": metrics, "progress": progress})
    try:
        server = ThreadingHTTPServer((addr, port), handler)
    except OSError as exc:
        print(f"not serving metrics on {addr}:{port}: {exc}", file=sys.stderr)
        return False
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return True


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_variational(env: dict[str, str], progress: Progress) -> dict[str, Any]:
    if threading.current_thread() is threading.main_thread():
        # The pod is stopped (SIGTERM): the loop ends and its batch in flight is cancelled.
        signal.signal(signal.SIGTERM, _raise_terminated)
    task = VariationalTask.from_env(env)
    progress.optimizer = task.optimizer
    progress.subtask = env.get("QORCH_SUBTASK", "")
    progress.attempt = int(env.get("QORCH_ATTEMPT", "0") or 0)
    evaluator = Evaluator(task)
    # The pod's projected token for the gateways' audience; where none is mounted (a
    # gateway that checks no tokens, a local run) batches go without one.
    token = env.get("QORCH_GATEWAY_TOKEN_FILE") or ""
    evaluator.token_file = token if token and os.path.exists(token) else None
    try:
        result = optimise(task, evaluator, progress)
    finally:
        evaluator.close()
        if threading.current_thread() is threading.main_thread():
            # The loop is over: a SIGTERM now may not fail the result being written.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return {**result, "method": "variational", "device": "CPU"}


def main(command: list[str], env: dict[str, str] | None = None) -> int:
    started = time.perf_counter()
    env = dict(os.environ if env is None else env)
    metrics = WorkerMetrics.create()
    port = int(env.get("QORCH_METRICS_PORT", "0") or 0)
    variational = not command and bool(env.get("QORCH_VARIATIONAL"))
    progress = Progress(optimizer="") if variational else None
    addr = env.get("QORCH_METRICS_ADDR", "0.0.0.0")
    serving = bool(port) and _serve(port, addr, metrics, progress)
    if env.get("QORCH_NODE_PRICE_USD_PER_SECOND"):
        metrics.cost_per_second.set(float(env["QORCH_NODE_PRICE_USD_PER_SECOND"]))
    if env.get("QORCH_GATEWAY_URL"):
        _gateway_latency(env["QORCH_GATEWAY_URL"], metrics)
    result_path = env.get("QORCH_RESULT_PATH", "/dev/termination-log")
    code, message = 0, ""
    result: dict[str, Any] | None = None
    try:
        if command:
            code, result = run_command(command, metrics)
        elif progress is not None:
            result = run_variational(env, progress)
        else:
            result = simulate(CircuitTask.from_env(env), metrics)
    except BadInputError as exc:
        code, message = EXIT_BAD_INPUT, f"bad input: {exc}"
    except Terminated:
        code, message = EXIT_TERMINATED, "terminated (SIGTERM): the loop stopped"
    except Exception as exc:  # the simulator's own failures (memory, unsupported gates)
        code, message = EXIT_SIMULATION_FAILED, f"simulation failed: {type(exc).__name__}: {exc}"
    metrics.runs.labels(outcome="success" if code == 0 else "failure").inc()
    usage = _record_usage(metrics)
    if result is not None:
        result["usage"] = usage.summary(
            time.perf_counter() - started,
            method=str(result.get("method", "command")),
            device=str(result.get("device", "CPU")),
        )
        message = fit_result(result)
    try:
        with open(result_path, "w") as fh:
            fh.write(message[:RESULT_LIMIT_BYTES])
    except OSError as exc:
        print(f"cannot write the result to {result_path}: {exc}", file=sys.stderr)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    linger = float(env.get("QORCH_METRICS_LINGER_SECONDS", "0") or 0)
    if serving and linger > 0:
        time.sleep(linger)  # let Prometheus scrape the final values of a short run
    return code
