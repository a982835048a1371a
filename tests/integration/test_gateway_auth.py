"""Callers of the quantum gateway are authenticated with ServiceAccount tokens (TokenReview on
the real apiserver) and authorized against an allow-list; the gateway runs as a real process
under the chart's gateway ClusterRole (TokenReview create, nothing else)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devenv import gateway as gateway_mod
from devenv.cluster import Cluster, wait_for
from devenv.controlplane import REPO, ControlPlane, free_port
from qorch.gateway.auth import (
    AllowList,
    AuthError,
    KubeTokenReviewer,
    Review,
    ReviewCache,
    TokenAuth,
    auth_middleware,
)
from qorch.gateway.base import GatewayError, GatewayTarget, JobRequest
from qorch.gateway.client import HttpGatewayClient
from qorch.operator.runtime import make_gateway
from qorch.operator.settings import OperatorSettings
from qorch.orchestrator.snapshot import JobPhase

pytestmark = pytest.mark.controlplane
GATEWAY_RULES = REPO / "charts" / "qorch" / "files" / "gateway-clusterrole-rules.yaml"
AUDIENCE = "qorch-gateway"
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
GHZ = STD + "qubit[3] q; bit[3] c; h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"


@dataclass
class Setup:
    plane: ControlPlane
    ns: str  # `caller` is allowed by name, `stranger` is not
    team: str  # allowed as a whole namespace (--allow-namespace)
    other: str  # holds another `caller`, not allowed
    gateway_kubeconfig: Path
    work: Path

    def token(self, account: str, namespace: str | None = None, audience: str = AUDIENCE) -> str:
        args = ["create", "token", account, "-n", namespace or self.ns]
        if audience:
            args += ["--audience", audience]
        return str(self.plane.kubectl(*args).stdout.strip())


def write_kubeconfig(path: Path, plane: ControlPlane, token: str, server: str = "") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": server or plane.server,
                            "certificate-authority": str(plane.pki.ca_cert),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def setup(cluster: Cluster, session_dir: Path) -> Iterator[Setup]:
    plane = cluster.plane
    ns, team, other = (cluster.new_namespace(f"gw-auth-{h}") for h in ("main", "team", "other"))
    role = f"{ns}-gateway"
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": s}}
        for n, s in (
            ("qorch-gateway", ns),
            ("caller", ns),
            ("stranger", ns),
            ("worker", team),
            ("caller", other),
        )
    ]
    objects += [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": yaml.safe_load(GATEWAY_RULES.read_text()),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "qorch-gateway", "namespace": ns}],
        },
    ]
    cluster.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    work = session_dir / f"gateway-auth-{ns}"
    work.mkdir()
    # The gateway's own identity: a token for the apiserver (default audience).
    gateway_token = plane.kubectl("create", "token", "qorch-gateway", "-n", ns).stdout.strip()
    kubeconfig = write_kubeconfig(work / "gateway-kubeconfig.yaml", plane, gateway_token)
    # Least privilege holds: the gateway's identity can create TokenReviews and nothing else.
    can = plane.kubectl(
        "auth", "can-i", "--kubeconfig", str(kubeconfig), "create", "tokenreviews", check=False
    )
    assert can.stdout.strip() == "yes", can.stdout + can.stderr
    cannot = plane.kubectl(
        "auth", "can-i", "--kubeconfig", str(kubeconfig), "list", "pods", "-A", check=False
    )
    assert cannot.stdout.strip() == "no", cannot.stdout + cannot.stderr
    yield Setup(plane, ns, team, other, kubeconfig, work)
    plane.kubectl("delete", "clusterrolebinding,clusterrole", role, "--wait=false", check=False)


@pytest.fixture(scope="module")
def gateway(setup: Setup) -> Iterator[gateway_mod.GatewayProcess]:
    with gateway_mod.running(
        setup.work / "gateway.log",
        "--provider",
        "aer",
        "--backend",
        "aer_local",
        "--max-qubits",
        "4",
        auth=(
            "--auth",
            "tokenreview",
            "--allow-serviceaccount",
            f"{setup.ns}/caller",
            "--allow-namespace",
            setup.team,
        ),
        kubeconfig=setup.gateway_kubeconfig,
    ) as gw:
        yield gw


def call(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    authorization: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    return gateway_mod.call(method, url, body, headers)


def job(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "backend": "aer_local", "qasm": GHZ, "shots": 200}


def assert_unauthorized(result: tuple[int, dict[str, str], Any], detail: str) -> None:
    status, headers, body = result
    assert status == 401, (status, body)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
    assert detail in body["detail"], body


def test_no_token_is_refused_with_a_bearer_challenge(gateway: gateway_mod.GatewayProcess) -> None:
    missing = "missing bearer token"
    assert_unauthorized(call("POST", f"{gateway.url}/v1/jobs", job("anon")), missing)
    assert_unauthorized(call("POST", f"{gateway.url}/v1/jobs/status", {"job_ids": []}), missing)
    assert_unauthorized(call("GET", f"{gateway.url}/v1/backend"), missing)
    assert_unauthorized(call("DELETE", f"{gateway.url}/v1/jobs/anon"), missing)
    basic = call("POST", f"{gateway.url}/v1/jobs", job("anon"), authorization="Basic dTpw")
    assert_unauthorized(basic, missing)


def test_garbage_and_forged_tokens_are_refused(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    refused = "not a valid ServiceAccount token"
    assert_unauthorized(
        call("POST", f"{gateway.url}/v1/jobs", job("garbage"), token="not-a-token"), refused
    )
    # A real token of the allowed account with its signature altered.
    header, claims, signature = setup.token("caller").split(".")
    forged = f"{header}.{claims}.{signature[::-1]}"
    assert_unauthorized(
        call("POST", f"{gateway.url}/v1/jobs", job("forged"), token=forged), refused
    )


def test_tokens_minted_for_another_audience_are_refused(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    other = setup.token("caller", audience="some-other-service")
    assert_unauthorized(
        call("POST", f"{gateway.url}/v1/jobs", job("aud1"), token=other), "ServiceAccount token"
    )
    # The apiserver's own audience: a token a pod uses for the API cannot be replayed here.
    api_token = setup.token("caller", audience="")
    assert_unauthorized(
        call("POST", f"{gateway.url}/v1/jobs", job("aud2"), token=api_token),
        "ServiceAccount token",
    )


def test_allowed_service_account_submits_and_its_job_completes(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    token = setup.token("caller")
    status, _, body = call("POST", f"{gateway.url}/v1/jobs", job("allowed-ghz"), token=token)
    assert status == 202, body
    assert body["job_id"] == "allowed-ghz"

    def finished() -> dict[str, Any] | None:
        code, _, record = call("GET", f"{gateway.url}/v1/jobs/allowed-ghz", token=token)
        assert code == 200, record
        return record if record["phase"] in ("Done", "Error", "Cancelled") else None

    record = wait_for("the allowed caller's job", finished, timeout=120)
    assert record["phase"] == "Done", record
    assert set(record["result"]["counts"]) <= {"000", "111"}
    assert sum(record["result"]["counts"].values()) == 200


def test_any_service_account_of_an_allowed_namespace_is_let_in(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    status, _, body = call(
        "GET", f"{gateway.url}/v1/backend", token=setup.token("worker", setup.team)
    )
    assert status == 200, body
    assert body["name"] == "aer_local"


def test_valid_token_of_an_account_not_allowed_is_forbidden(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    stranger = setup.token("stranger")
    status, headers, body = call(
        "POST", f"{gateway.url}/v1/jobs", job("stranger-job"), token=stranger
    )
    assert status == 403, body
    assert f"service account {setup.ns}/stranger" in body["detail"], body
    assert stranger not in json.dumps(body) and stranger not in json.dumps(headers)
    # Same account name, another namespace: the namespace is part of the identity.
    namesake = setup.token("caller", setup.other)
    status, _, body = call("POST", f"{gateway.url}/v1/jobs", job("namesake-job"), token=namesake)
    assert status == 403, body
    assert f"service account {setup.other}/caller" in body["detail"], body
    # Neither refused request reached the service.
    token = setup.token("caller")
    for job_id in ("stranger-job", "namesake-job"):
        code, _, record = call("GET", f"{gateway.url}/v1/jobs/{job_id}", token=token)
        assert code == 404, record


def test_probes_metrics_and_openapi_answer_without_a_token(
    gateway: gateway_mod.GatewayProcess,
) -> None:
    status, _, body = call("GET", f"{gateway.url}/healthz")
    assert (status, body) == (200, {"ok": True})
    status, _, text = call("GET", f"{gateway.url}/metrics")
    assert status == 200
    assert "# TYPE" in text
    status, _, doc = call("GET", f"{gateway.url}/openapi.json")
    assert status == 200
    assert "/v1/jobs" in doc["paths"]


async def test_operator_client_sends_the_token_file_and_rereads_it(
    setup: Setup,
    gateway: gateway_mod.GatewayProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets = {"aer": GatewayTarget(url=gateway.url, backend_name="aer_local")}
    token_file = tmp_path / "token"
    token_file.write_text(setup.token("caller") + "\n")
    # As the chart configures the operator: the path of its projected token in the env.
    monkeypatch.setenv("QORCH_GATEWAY_TOKEN_FILE", str(token_file))
    client = make_gateway(OperatorSettings.from_env(), targets)
    assert isinstance(client, HttpGatewayClient)
    anonymous = HttpGatewayClient(targets)
    try:
        await client.submit(JobRequest(job_id="operator-ghz", backend="aer", qasm=GHZ, shots=100))
        for _ in range(1200):
            state = (await client.status("aer", ["operator-ghz"]))["operator-ghz"]
            if state.phase in (JobPhase.DONE, JobPhase.ERROR, JobPhase.CANCELLED):
                break
            await asyncio.sleep(0.1)
        assert state.phase is JobPhase.DONE, state
        assert state.result is not None and sum(state.result["counts"].values()) == 100

        # Without a token the operator's request is refused, and not as a retryable error.
        with pytest.raises(GatewayError, match="401") as refused:
            await anonymous.status("aer", ["operator-ghz"])
        assert not refused.value.retryable
        # The kubelet rotates the projected token: the client reads the file anew each time.
        token_file.write_text(setup.token("stranger"))
        with pytest.raises(GatewayError, match="403"):
            await client.status("aer", ["operator-ghz"])
        token_file.write_text(setup.token("caller"))
        assert "operator-ghz" in await client.status("aer", ["operator-ghz"])
        token_file.unlink()
        with pytest.raises(GatewayError, match="token file") as missing:
            await client.status("aer", ["operator-ghz"])
        assert missing.value.retryable
    finally:
        await client.close()
        await anonymous.close()


def test_tokens_never_reach_the_gateway_log(
    setup: Setup, gateway: gateway_mod.GatewayProcess
) -> None:
    tokens = [setup.token("caller"), setup.token("stranger"), setup.token("caller", audience="x")]
    refused = f"service account {setup.ns}/stranger"
    before = gateway.log_path.read_text().count(refused)
    for token in tokens:
        call("GET", f"{gateway.url}/v1/backend", token=token)

    def logged() -> str | None:
        # The gateway logs its refusals (not every request: no access log by default).
        text = gateway.log_path.read_text()
        return text if text.count(refused) > before else None

    log = wait_for("the refusal of the stranger's token in the log", logged)
    for token in tokens:
        assert token not in log
        assert token.rsplit(".", 1)[1] not in log  # not even the signature


def test_the_default_mode_checks_tokens_and_none_must_be_chosen(
    setup: Setup, tmp_path: Path
) -> None:
    with gateway_mod.running(
        tmp_path / "default.log",
        "--provider",
        "aer",
        auth=("--allow-namespace", setup.ns),  # no --auth flag: the default applies
        kubeconfig=setup.gateway_kubeconfig,
    ) as gw:
        assert_unauthorized(call("GET", f"{gw.url}/v1/backend"), "missing bearer token")
        status, _, _ = call("GET", f"{gw.url}/v1/backend", token=setup.token("stranger"))
        assert status == 200
    with gateway_mod.running(tmp_path / "none.log", "--provider", "aer") as gw:
        status, _, body = call("GET", f"{gw.url}/v1/backend")
        assert status == 200, body
        assert "--auth none: ANY client" in gw.log_path.read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "--auth tokenreview allows nobody"),
        (["--auth", "none", "--allow-namespace", "x"], "need --auth tokenreview"),
        (["--allow-serviceaccount", "just-a-name"], "expected NAMESPACE/NAME"),
        (["--allow-namespace", "Not_A_Namespace"], "not a namespace name"),
    ],
)
def test_gateway_refuses_to_start_open_or_misconfigured(flags: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qorch.cli", "gateway", "--provider", "aer", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr, out.stderr


class CountingReviewer:
    def __init__(self, inner: KubeTokenReviewer) -> None:
        self.inner = inner
        self.calls = 0

    def review(self, token: str, audience: str) -> Review:
        self.calls += 1
        return self.inner.review(token, audience)


async def test_authenticated_reviews_are_cached_briefly_and_refusals_are_not(
    setup: Setup,
) -> None:
    now = [1000.0]
    reviewer = CountingReviewer(KubeTokenReviewer.from_config(str(setup.gateway_kubeconfig)))
    cache = ReviewCache(ttl_seconds=60, max_entries=2, clock=lambda: now[0])
    auth = TokenAuth(reviewer, AllowList.parse([f"{setup.ns}/caller"]), cache=cache)
    caller, stranger = setup.token("caller"), setup.token("stranger")

    for _ in range(3):
        assert await auth.authenticate(f"Bearer {caller}") == (
            f"system:serviceaccount:{setup.ns}:caller"
        )
    assert reviewer.calls == 1
    # Authenticated but not allowed: the identity is cached, the refusal stands each time.
    for _ in range(2):
        with pytest.raises(AuthError) as err:
            await auth.authenticate(f"Bearer {stranger}")
        assert err.value.status == 403
    assert reviewer.calls == 2
    # Refused tokens are asked about every time.
    for _ in range(2):
        with pytest.raises(AuthError) as err:
            await auth.authenticate("Bearer nonsense")
        assert err.value.status == 401
    assert reviewer.calls == 4
    # Past the TTL the apiserver is asked again.
    now[0] += 61
    await auth.authenticate(f"Bearer {caller}")
    assert reviewer.calls == 5
    # Bounded: a third identity evicts the least recently used one.
    with pytest.raises(AuthError):
        await auth.authenticate(f"Bearer {setup.token('worker', setup.team)}")
    assert reviewer.calls == 6
    assert len(cache) == 2


async def test_an_unreachable_apiserver_answers_503_not_401(setup: Setup, tmp_path: Path) -> None:
    dead = write_kubeconfig(
        tmp_path / "dead.yaml", setup.plane, "x", server=f"https://127.0.0.1:{free_port()}"
    )
    auth = TokenAuth(KubeTokenReviewer.from_config(str(dead)), AllowList.parse([], [setup.ns]))

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[auth_middleware(auth)])
    app.router.add_get("/v1/backend", ok)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        started = time.monotonic()
        resp = await client.get(
            "/v1/backend", headers={"Authorization": f"Bearer {setup.token('caller')}"}
        )
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "5"
        assert "retry" in (await resp.json())["detail"]
        assert time.monotonic() - started < 30
    finally:
        await client.close()
