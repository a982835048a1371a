"""The quantum gateway over real HTTP with real Aer / fake-backend simulations."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from qorch.api.backend import Provider
from qorch.gateway.backends import build_backend
from qorch.gateway.http import MAX_BODY_BYTES, make_app
from qorch.gateway.service import GatewayRequestError, GatewayService, Submission
from qorch.metrics.exporters import GatewayMetrics
from qorch.orchestrator.snapshot import JobPhase

STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ3 = STD + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
BELL = STD + "qubit[2] q; h q[0]; cx q[0], q[1];"


async def _client(provider: Provider, name: str | None, **kw: Any) -> TestClient:
    adapter = build_backend(provider, name, max_qubits=kw.pop("max_qubits", None))
    service = GatewayService(adapter, GatewayMetrics.create(), **kw)
    client = TestClient(TestServer(make_app(service)))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def aer() -> AsyncIterator[TestClient]:
    client = await _client(Provider.AER, "aer", max_qubits=12)
    yield client
    await client.close()


async def run_job(client: TestClient, wait_seconds: float = 60, **payload: Any) -> dict[str, Any]:
    payload.setdefault("backend", "aer")
    resp = await client.post("/v1/jobs", json=payload)
    assert resp.status == 202, await resp.text()
    for _ in range(int(wait_seconds * 20)):
        job: dict[str, Any] = await (await client.get(f"/v1/jobs/{payload['job_id']}")).json()
        if job["phase"] in ("Done", "Error", "Cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {payload['job_id']} did not finish: {job}")


async def test_ghz_on_aer_gives_only_all_zeros_and_all_ones(aer: TestClient) -> None:
    job = await run_job(aer, job_id="ghz", qasm=GHZ3, shots=4000)
    assert job["phase"] == "Done", job
    counts = job["result"]["counts"]
    assert set(counts) == {"000", "111"}
    assert sum(counts.values()) == 4000
    # Binomial(4000, 0.5): 6 sigma is ~190 shots.
    assert abs(counts["000"] - 2000) < 190


async def test_estimator_values_of_a_bell_state_within_tolerance(aer: TestClient) -> None:
    job = await run_job(
        aer,
        job_id="bell",
        qasm=BELL,
        primitive="estimator",
        shots=8000,
        observables=["ZZ", "XX", "ZI", "YY"],
    )
    assert job["phase"] == "Done", job
    evs = dict(zip(job["result"]["observables"], job["result"]["expectationValues"], strict=True))
    tolerance = 6 / math.sqrt(8000)  # six standard errors of a ±1 observable
    assert evs["ZZ"] == pytest.approx(1.0, abs=tolerance)
    assert evs["XX"] == pytest.approx(1.0, abs=tolerance)
    assert evs["YY"] == pytest.approx(-1.0, abs=tolerance)
    assert evs["ZI"] == pytest.approx(0.0, abs=tolerance)


def estimated_success_probability(isa: Any, target: Any) -> float:
    """The calibration's own prediction for a transpiled circuit: the product of
    (1 - error) over its gates and measurements on the qubits it was laid out on."""
    probability = 1.0
    for inst in isa.data:
        name = inst.operation.name
        qargs = tuple(isa.find_bit(q).index for q in inst.qubits)
        props = target[name].get(qargs) if name in target else None
        if props is not None and props.error is not None:
            probability *= 1 - props.error
    return probability


async def test_fake_backend_shows_noise_consistent_with_its_calibration() -> None:
    service = GatewayService(build_backend(Provider.FAKE, "fake_manila"), GatewayMetrics.create())
    record = service.submit(Submission("ghz-noisy", "fake_manila", GHZ3, "sampler", 8000, ()))
    await service.execute([record])
    assert record.phase is JobPhase.DONE, record.message
    counts = record.result["counts"] if record.result else {}
    fidelity = (counts.get("000", 0) + counts.get("111", 0)) / 8000
    expected = estimated_success_probability(record.prepared.isa, service.adapter.backend.target)
    calibration = service.adapter.calibration()
    assert calibration.medianTwoQubitError is not None
    assert 0 < calibration.medianTwoQubitError < 0.1
    assert fidelity < 0.99, "a noisy backend gave an ideal GHZ state"
    assert len(counts) > 2
    # Measured on this machine: fidelity 0.835-0.851 against a prediction of 0.833; the
    # shot noise alone is ~0.004 (8000 shots).
    assert abs(fidelity - expected) < 0.05, (fidelity, expected)


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        (
            {"qasm": STD + "qubit[2] q; h q[0]; cx q[0] q[1];"},
            422,
            "OpenQASM does not parse: line 1, column ",
        ),
        (
            {"qasm": STD + "qubit[20] q; bit[20] c; h q[0]; c = measure q;"},
            422,
            "circuit has 20 qubits but aer has 12",
        ),
        ({"backend": "ibm_torino"}, 404, "unknown backend 'ibm_torino': this gateway serves 'aer'"),
        ({"qasm": "x" * (MAX_BODY_BYTES + 10)}, 413, f"request body over {MAX_BODY_BYTES} bytes"),
        ({"shots": 0}, 422, "shots must be 1..1000000, not 0"),
        ({"shots": "many"}, 400, "field 'shots' must be int"),
        ({"qasm": BELL}, 422, "a sampler circuit needs measurements"),
        (
            {"primitive": "estimator", "qasm": BELL, "observables": ["ZZZ"]},
            422,
            "observable 'ZZZ' must be 2 letters of IXYZ",
        ),
    ],
)
async def test_bad_input_gets_a_specific_4xx_and_does_not_disturb_other_jobs(
    aer: TestClient, payload: dict[str, Any], status: int, detail: str
) -> None:
    first = await aer.post(
        "/v1/jobs", json={"job_id": "good-1", "backend": "aer", "qasm": GHZ3, "shots": 100}
    )
    assert first.status == 202
    bad = {"job_id": "bad", "backend": "aer", "qasm": GHZ3, **payload}
    resp = await aer.post("/v1/jobs", json=bad)
    assert resp.status == status, await resp.text()
    assert detail in (await resp.json())["detail"]
    assert (await aer.get("/v1/jobs/bad")).status == 404  # never entered the queue
    good = await run_job(aer, job_id="good-2", qasm=GHZ3, shots=100)
    assert good["phase"] == "Done"
    assert (await (await aer.get("/v1/jobs/good-1")).json())["phase"] == "Done"


async def test_resubmission_is_idempotent_and_queued_jobs_can_be_cancelled() -> None:
    # The service alone, without its dispatcher: jobs stay queued until execute() is called.
    service = GatewayService(
        build_backend(Provider.AER, "aer", max_qubits=12), GatewayMetrics.create(), batch_size=2
    )
    sub = Submission("j1", "aer", GHZ3, "sampler", 10, ())
    first = service.submit(sub)
    assert service.submit(sub) is first
    with pytest.raises(GatewayRequestError) as clash:
        service.submit(Submission("j1", "aer", GHZ3, "sampler", 11, ()))
    assert clash.value.status == 409
    for i in range(3):
        service.submit(Submission(f"q{i}", "aer", GHZ3, "sampler", 10, ()))
    service.submit(Submission("other-shots", "aer", GHZ3, "sampler", 99, ()))
    assert service.cancel("j1").phase is JobPhase.CANCELLED
    batch = service.next_batch()
    assert [r.submission.job_id for r in batch] == ["q0", "q1"]  # same shots, batch of 2
    await service.execute(batch)
    assert all(r.phase is JobPhase.DONE for r in batch)
    assert service.jobs["q2"].phase is JobPhase.QUEUED
    assert service.jobs["j1"].phase is JobPhase.CANCELLED
    with pytest.raises(GatewayRequestError) as unknown:
        service.cancel("nope")
    assert unknown.value.status == 404


async def test_status_of_several_jobs_and_openapi(aer: TestClient) -> None:
    await run_job(aer, job_id="s1", qasm=GHZ3, shots=10)
    statuses = await (await aer.post("/v1/jobs/status", json={"job_ids": ["s1", "nope"]})).json()
    assert [j["job_id"] for j in statuses["jobs"]] == ["s1"]
    openapi = await (await aer.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/status", "/v1/jobs/{job_id}"} <= set(openapi["paths"])
    metrics = await (await aer.get("/metrics")).text()
    assert 'qorch_gateway_jobs_total{backend="aer",outcome="done"} 1.0' in metrics


@pytest.mark.parametrize("mode", ["batch", "session"])
async def test_batch_and_session_execution_modes_share_one_context(mode: str) -> None:
    service = GatewayService(
        build_backend(Provider.FAKE, "fake_manila", execution_mode=mode),
        GatewayMetrics.create(),
        batch_size=1,
    )
    for i in range(2):
        service.submit(Submission(f"{mode}-{i}", "fake_manila", GHZ3, "sampler", 100, ()))
        await service.execute(service.next_batch())
    assert all(j.phase is JobPhase.DONE for j in service.jobs.values())
    context = service.adapter._context
    assert type(context).__name__ == mode.capitalize()
