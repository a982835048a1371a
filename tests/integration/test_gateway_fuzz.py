"""Schemathesis against a real ``qorch gateway`` process (aer): requests generated from its
own ``/openapi.json``, valid and invalid, must never get a 5xx, must get answers that the
document describes (status codes, content types, schemas, headers), and must leave the
gateway alive and computing correctly: a Bell state submitted before and after the fuzzing
gives only 00 and 11.

``bench/gateway_fuzz.py`` runs the same fuzzing with many more examples."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction

from devenv import gateway as gateway_mod

STD = 'OPENQASM 3.0; include "stdgates.inc"; '
BELL = STD + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"
EXAMPLES_PER_OPERATION = 100  # per generation mode: ~600 requests, ~10 s on 2 cores
TRACEBACK = "\nTraceback (most recent call last):"  # a log line (job ids may say "Traceback")


def checks() -> list[CheckFunction]:
    """What every answer must satisfy; ``negative_data_rejection``: what the document calls
    invalid gets a 4xx, so the document says what the gateway really refuses."""
    from schemathesis import checks as st

    return [
        st.not_a_server_error,
        st.status_code_conformance,
        st.content_type_conformance,
        st.response_headers_conformance,
        st.response_schema_conformance,
        st.negative_data_rejection,
    ]


@dataclass
class FuzzReport:
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.examples} requests in {self.seconds:.1f} s ({codes}); "
            f"{len(self.failures)} failing operation(s)"
        )


def fuzz_gateway(base_url: str, examples_per_operation: int, seed: int | None = None) -> FuzzReport:
    """Every operation of the gateway's document, in positive and negative generation mode,
    ``examples_per_operation`` requests each: the same ones every run, or the ones of
    ``seed``. A failing check ends that operation's run (no shrinking: the first failing
    request is reported as a curl command)."""
    report = FuzzReport()
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(
                operation, mode, base_url, session, examples_per_operation, seed, report
            )
    report.seconds = time.monotonic() - started
    return report


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    examples: int,
    seed: int | None,
    report: FuzzReport,
) -> None:
    last: list[Any] = []

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=seed is None,
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        last[:] = [case]
        response = case.call(base_url=base_url, session=session, timeout=60)
        report.examples += 1
        report.statuses[response.status_code] += 1
        case.validate_response(response, checks=checks())

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing to make invalid (no parameters, no body)
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
        curl = last[0].as_curl_command() if last else "(no request)"
        report.failures.append(
            f"{operation.label} [{mode.value}]: {type(exc).__name__}: {exc}\n{curl}"
        )


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, _, payload = gateway_mod.call(method, url, body)
    return status, payload


def bell_counts(base_url: str, backend: str, job_id: str) -> dict[str, int]:
    """Submit a Bell state and wait for its counts."""
    body = {"job_id": job_id, "backend": backend, "qasm": BELL, "shots": 2000}
    status, job = call("POST", f"{base_url}/v1/jobs", body)
    assert status == 202, job
    deadline = time.monotonic() + 120
    while job["phase"] in ("Queued", "Running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        status, job = call("GET", f"{base_url}/v1/jobs/{job_id}")
        assert status == 200, job
    assert job["phase"] == "Done", job
    counts: dict[str, int] = job["result"]["counts"]
    return counts


def test_fuzzing_the_documented_api_finds_no_server_error_and_leaves_it_computing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gateway.log"
    with gateway_mod.running(
        log, "--provider", "aer", "--backend", "aer", "--max-qubits", "8"
    ) as gw:
        before = bell_counts(gw.url, "aer", "bell-before")
        assert set(before) == {"00", "11"} and sum(before.values()) == 2000

        report = fuzz_gateway(gw.url, EXAMPLES_PER_OPERATION)

        assert gw.process.poll() is None, f"the gateway died: {log.read_text()[-2000:]}"
        assert not report.failures, report.summary() + "\n\n" + "\n\n".join(report.failures)
        assert report.examples >= 100, report.summary()
        assert not any(code >= 500 for code in report.statuses), report.summary()
        after = bell_counts(gw.url, "aer", "bell-after")
        assert set(after) == {"00", "11"} and sum(after.values()) == 2000
    assert TRACEBACK not in log.read_text(), log.read_text()[-4000:]
