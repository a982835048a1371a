"""The image's install without a container engine: the Dockerfile's build stages (their COPY
and RUN steps) run here in a fresh virtualenv with the same lock, then the commands pods run
from the image: ``qorch --help``, ``qorch worker`` and ``qorch gateway``.

The steps are read from the Dockerfile, not copied into this file: a step this test does not
know fails it (teach it the step rather than let the two drift apart). What differs from the
image, none of it in what gets installed:

- paths: the image's virtualenv (/opt/qorch) and working directory live under a temporary
  directory, and ``python`` is this interpreter, which must be the base image's version;
- ``--no-cache-dir`` is dropped: in the image it keeps pip's cache out of the layer; here the
  cache only spares downloads on the next run. pip still resolves every requirement against
  the index and the lock; the cache holds the files the index serves.

Slow: the first run downloads every locked package (about 600 MB installed); a run with a
warm pip cache mostly unpacks them. The gpu target's CUDA wheels (2.7 GB more) are not
installed unless QORCH_TEST_GPU_IMAGE=1: by default its install steps are checked against
the lock, and their resolution with pip's --dry-run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devenv.controlplane import free_port
from devenv.gateway import call, wait_job

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
IMAGE_VENV = "/opt/qorch"  # the image's virtualenv: the build stages make it, targets copy it
INSTALL_TIMEOUT = 1800  # a cold pip cache on a slow link (a fast one: under a minute)
COMMAND_TIMEOUT = 300
# pip's resolution from a clean slate, as JSON on stdout (--quiet keeps pip's log out of it).
DRY_RUN = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
DRY_RUN += ["--report", "-"]
SEED_PACKAGES = {"pip", "setuptools"}  # what `python -m venv` puts in (ensurepip)
NON_ROOT = "65532:65532"
STD = 'OPENQASM 3.0; include "stdgates.inc"; '
BELL = STD + "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;"

# Every shell step of a build stage's RUN this test runs here (``&&``-separated); anything
# else fails the test. No shell expansions or redirections in pip's arguments.
KNOWN_STEPS = (
    re.compile(r"python -m venv /opt/qorch"),
    re.compile(r"/opt/qorch/bin/pip (install|uninstall) [^|;&<>`$()]+"),
    re.compile(r"! /opt/qorch/bin/pip check \| grep -v( -e '[^']*')+"),
)


# ---- the Dockerfile ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  # an image, or an earlier stage's name
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, in order, each with its instructions (continued lines joined;
    comments dropped, inside a continued instruction too, as Docker does)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            named = len(words) == 3 and words[1].lower() == "as"
            current = Stage(words[2] if named else str(len(stages)), words[0])
            stages[current.name] = current
        else:
            assert current is not None, f"{instruction!r} before the first FROM"
            current.instructions.append((keyword, args))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """Stage ``name`` and the stages it is built on, the first first."""
    out: list[Stage] = []
    while name in stages:
        out.insert(0, stages[name])
        name = stages[name].base
    return out


@dataclass(frozen=True)
class Image:
    """One target: its own stages, and the build stages its virtualenv comes from."""

    target: str
    stages: list[Stage]
    build: list[Stage]

    @property
    def base(self) -> str:
        return self.stages[0].base


def image(target: str | None = None) -> Image:
    """``target`` of the Dockerfile; None: the default one, its last stage."""
    stages = parse_dockerfile(DOCKERFILE.read_text())
    target = target or list(stages)[-1]
    assert target in stages, f"the Dockerfile has no stage {target!r}: {list(stages)}"
    own = chain(stages, target)
    sources = [
        m.group(1)
        for stage in own
        for args in stage.args("COPY")
        if (m := re.fullmatch(rf"--from=(\S+) {IMAGE_VENV} {IMAGE_VENV}", args))
    ]
    assert len(sources) == 1, f"{target}: expected one COPY --from=STAGE of {IMAGE_VENV}"
    return Image(target, own, chain(stages, sources[0]))


def known_steps(run: str) -> list[str]:
    steps = [step.strip() for step in run.split("&&")]
    for step in steps:
        if not any(p.fullmatch(step) for p in KNOWN_STEPS):
            pytest.fail(
                f"the Dockerfile runs {step!r}, a step tests/integration/test_install.py does "
                "not know: teach it (KNOWN_STEPS), so that it still installs as the image does"
            )
    return steps


def pip_steps(stages: list[Stage]) -> list[list[str]]:
    """The words of every pip install/uninstall of ``stages``' RUNs, in order."""
    return [
        shlex.split(step)
        for stage in stages
        for run in stage.args("RUN")
        for step in known_steps(run)
        if step.startswith(f"{IMAGE_VENV}/bin/pip ")
    ]


def requirement_args(words: list[str]) -> list[str]:
    """The requirements of ``pip install|uninstall WORDS...`` (options and their values out)."""
    out: list[str] = []
    skip = False
    for word in words[2:]:
        if skip:
            skip = False
        elif word in ("-c", "--constraint", "-r", "--requirement"):
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


def read_lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version
    return pins


def python_version(base: str) -> str:
    m = re.fullmatch(r"python:(\d+\.\d+)[-.\w]*", base)
    assert m, f"the image is built FROM {base!r}, not a python:X.Y image"
    return m.group(1)


# ---- running the build stages here -------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    image: Image
    root: Path  # the image's / lives here
    seconds: float

    @property
    def venv(self) -> Path:
        return self.root / IMAGE_VENV.lstrip("/")

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of the image's processes: its ENV lines (paths mapped), no QORCH_*
        or Python settings of this process."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("QORCH_", "PYTHON")) and k not in ("VIRTUAL_ENV", "KUBECONFIG")
        }
        env["PATH"] = _host_path()
        for stage in self.image.stages:
            for args in stage.args("ENV"):
                for word in shlex.split(args):
                    key, _, value = word.partition("=")
                    value = value.replace("$PATH", env["PATH"]).replace("${PATH}", env["PATH"])
                    env[key] = value.replace(IMAGE_VENV, str(self.venv))
        return {**env, **extra}


def _host_path() -> str:
    """PATH without this test's own virtualenv."""
    own = str(Path(sys.prefix) / "bin")
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != own)


def _localize(step: str, venv: Path) -> str:
    if step.startswith("python "):
        step = shlex.quote(sys.executable) + step[len("python") :]
    step = re.sub(r"\s--no-cache-dir(?=\s|$)", "", step)
    return step.replace(IMAGE_VENV, shlex.quote(str(venv)))


def _copy(args: str, workdir: Path, root: Path) -> None:
    """A COPY from the build context (the repository), with Docker's rules: a directory's
    contents go into the destination; files go into it when it ends with '/'."""
    words = shlex.split(args)
    assert not any(w.startswith("--") for w in words), f"COPY {args}: flags not taught here"
    *sources, dest = words
    target = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
    into_dir = dest.endswith("/") or len(sources) > 1
    for pattern in sources:
        matches = sorted(REPO.glob(pattern))
        assert matches, f"COPY {args}: nothing in the repository matches {pattern!r}"
        for src in matches:
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            elif into_dir:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def install(img: Image, root: Path) -> Installed:
    """``img``'s build stages run under ``root`` (its COPYs from the repository, its RUNs
    through /bin/sh as Docker runs them), then the target's own COPYs (the models)."""
    version = python_version(img.build[0].base)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert version == here, f"the image runs Python {version}, this test {here}: not the same"
    started = time.monotonic()
    venv = root / IMAGE_VENV.lstrip("/")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = _host_path()
    workdir = root
    for stage in img.build:
        for keyword, args in stage.instructions:
            if keyword == "WORKDIR":
                workdir = root / args.lstrip("/") if args.startswith("/") else workdir / args
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                _copy(args, workdir, root)
            elif keyword == "RUN":
                command = " && ".join(_localize(step, venv) for step in known_steps(args))
                proc = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT,
                    check=False,
                )
                assert proc.returncode == 0, f"RUN {args}\n{_tail(proc)}"
            elif keyword != "LABEL":
                pytest.fail(f"build stage {stage.name}: {keyword} is not taught to this test")
    for stage in img.stages:
        for args in stage.args("COPY"):
            if not args.startswith("--from="):
                _copy(args, root, root)
    return Installed(img, root, time.monotonic() - started)


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def distributions(installed: Installed) -> dict[str, tuple[str, list[str]]]:
    """What the virtualenv holds: canonical name -> (version, requirements)."""
    script = (
        "import json, importlib.metadata as m; print(json.dumps("
        "[[d.metadata['Name'], d.version, d.requires or []] for d in m.distributions()]))"
    )
    proc = _run(installed, [installed.bin("python"), "-c", script])
    return {canonicalize_name(n): (v, reqs) for n, v, reqs in json.loads(proc.stdout)}


def requirement_closure(dists: dict[str, tuple[str, list[str]]], root: str) -> set[str]:
    """``root`` and everything its requirements pull in (markers evaluated, extras only
    where asked for)."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in dists:
            continue
        seen.add((name, extras))
        names.add(name)
        for text in dists[name][1]:
            req = Requirement(text)
            marker = req.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return names


def _run(installed: Installed, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv,
        cwd=installed.root,
        env=installed.env(**env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{_tail(proc)}"
    return proc


def _bell_on_the_worker(installed: Installed, tmp_path: Path, **env: str) -> dict[str, Any]:
    result = tmp_path / "termination-log"
    _run(
        installed,
        [installed.bin("qorch"), "worker"],
        QORCH_QASM=BELL,
        QORCH_SHOTS="100",
        QORCH_RESULT_PATH=str(result),
        **env,
    )
    doc: dict[str, Any] = json.loads(result.read_text())
    assert sum(doc["counts"].values()) == 100, doc
    assert set(doc["counts"]) <= {"00", "11"}, doc  # a Bell pair: both bits agree
    assert doc["usage"]["device"] == doc["device"], doc
    return doc


# ---- the default (CPU) image -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    installed = install(image(), tmp_path_factory.mktemp("image"))
    sys.stderr.write(f"\n[qorch] image install ran in {installed.seconds:.0f} s\n")
    return installed


def test_both_targets_are_multi_stage_non_root_and_carry_the_models() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    default = image()
    assert default.target != "gpu", "the default target (the last stage) must be the CPU image"
    for img in (default, image("gpu")):
        # Multi-stage: the build stages' pip and sources stay out of the image.
        assert img.base not in stages and not {s.name for s in img.build} & {
            s.name for s in img.stages
        }, img.target
        users = [a for s in img.stages for a in s.args("USER")]
        assert users and users[-1] == NON_ROOT, f"{img.target} runs as {users}"
        copies = [a for s in img.stages for a in s.args("COPY")]
        assert "models/*.onnx models/MODEL_CARD.md /opt/qorch/models/" in copies, img.target
        [*_, entrypoint] = [a for s in img.stages for a in s.args("ENTRYPOINT")]
        assert json.loads(entrypoint) == ["qorch"], img.target
    # The same lock and the same base: the gpu build starts from the CPU one.
    gpu = image("gpu")
    assert gpu.build[: len(default.build)] == default.build
    assert python_version(gpu.base) == python_version(default.base)


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_image_holds_the_lock_and_nothing_else(cpu_image: Installed) -> None:
    _run(cpu_image, [cpu_image.bin("pip"), "check"])
    dists = distributions(cpu_image)
    lock = read_lock()
    unlocked = {
        name: version
        for name, (version, _) in dists.items()
        if name not in SEED_PACKAGES | {"qorch"} and lock.get(name) != version
    }
    assert not unlocked, f"installed at versions constraints.txt does not pin: {unlocked}"
    # Only what qorch's own requirements pull in: no extra (dev, train, sim) came along.
    needed = requirement_closure(dists, "qorch")
    assert set(dists) - needed - SEED_PACKAGES == set()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = {
        canonicalize_name(Requirement(r).name)
        for reqs in pyproject["project"]["optional-dependencies"].values()
        for r in reqs
    } - {"qorch"}
    assert {"pytest", "lightgbm", "matplotlib", "ruff"} <= extras
    assert not (extras - needed) & set(dists)
    # The installed qorch, not this checkout's.
    where = _run(cpu_image, [cpu_image.bin("python"), "-c", "import qorch; print(qorch.__file__)"])
    assert where.stdout.strip().startswith(str(cpu_image.venv)), where.stdout


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_help_lists_the_subcommands_pods_run(cpu_image: Installed) -> None:
    proc = _run(cpu_image, [cpu_image.bin("qorch"), "--help"])
    m = re.search(r"\{([a-z,-]+)\}", proc.stdout)
    assert m, proc.stdout
    subcommands = set(m.group(1).split(","))
    [cmd] = [json.loads(a) for s in cpu_image.image.stages for a in s.args("CMD")]
    assert {"operator", "gateway", "worker", cmd[0]} <= subcommands, proc.stdout


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_worker_simulates_a_bell_circuit(cpu_image: Installed, tmp_path: Path) -> None:
    doc = _bell_on_the_worker(cpu_image, tmp_path)
    assert doc["device"] == "CPU", doc  # qiskit-aer (CPU build) never sees a GPU


@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_gateway_runs_a_job_and_stops_on_sigterm(cpu_image: Installed, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    argv = [cpu_image.bin("qorch"), "gateway", "--provider", "aer", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port), "--auth", "none"],
            cwd=cpu_image.root,
            env=cpu_image.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the gateway exited: {log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        status, _, backend = call("GET", f"{url}/v1/backend")
        assert status == 200, backend
        job = {"job_id": "bell", "backend": backend["name"], "qasm": BELL, "shots": 100}
        status, _, accepted = call("POST", f"{url}/v1/jobs", job)
        assert status == 202, accepted
        done = wait_job(url, "bell", timeout=120)
        assert done["phase"] == "Done", done
        counts = done["result"]["counts"]
        assert sum(counts.values()) == 100 and set(counts) <= {"00", "11"}, done
        children = psutil.Process(proc.pid).children(recursive=True)  # its simulator process
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert code == 0, f"exit {code} on SIGTERM: {log_path.read_text()[-3000:]}"
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after the gateway exited: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ---- the gpu target ------------------------------------------------------------------------


def test_the_gpu_target_swaps_aer_for_aer_gpu_at_the_locked_version() -> None:
    default, gpu = image(), image("gpu")
    lock = read_lock()
    assert lock.get("qiskit-aer-gpu") == lock["qiskit-aer"], (
        "constraints.txt must pin qiskit-aer-gpu at qiskit-aer's version (its GPU block)"
    )
    assert gpu.build[: len(default.build)] == default.build
    swap = pip_steps(gpu.build[len(default.build) :])
    assert swap, "the gpu target's virtualenv must be the CPU build's, Aer swapped for Aer GPU"
    actions = [(words[1], requirement_args(words)) for words in swap]
    assert actions[0] == ("uninstall", ["qiskit-aer"]), actions  # same module, never both
    installs = [reqs for action, reqs in actions if action == "install"]
    assert len(installs) == 1 and len(installs[0]) == 1, actions
    req = Requirement(installs[0][0])
    assert canonicalize_name(req.name) == "qiskit-aer-gpu", actions
    assert req.specifier.contains(lock["qiskit-aer"]), req  # no pin, or the lock's
    [install_words] = [w for w in swap if w[1] == "install"]
    assert "-c" in install_words and install_words[install_words.index("-c") + 1] == (
        "constraints.txt"
    )


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="qiskit-aer-gpu has Linux x86_64 wheels only",
)
@pytest.mark.timeout(COMMAND_TIMEOUT)
def test_the_gpu_install_resolves_within_the_lock() -> None:
    """What the gpu stage's pip install would install (pip --dry-run, from a clean slate,
    package metadata only): every package pinned by the lock, at its pin."""
    default, gpu = image(), image("gpu")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python_version(gpu.base) == version
    [words] = [w for w in pip_steps(gpu.build[len(default.build) :]) if w[1] == "install"]
    proc = subprocess.run(
        [*DRY_RUN, *words[2:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, _tail(proc)
    report = json.loads(proc.stdout)
    resolved = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in report["install"]
    }
    lock = read_lock()
    assert {n: v for n, v in resolved.items() if lock.get(n) != v} == {}
    assert "qiskit-aer" not in resolved
    assert any(n.startswith("nvidia-") for n in resolved)  # CUDA comes as wheels


@pytest.mark.skipif(
    not os.environ.get("QORCH_TEST_GPU_IMAGE"),
    reason="downloads about 3 GB of CUDA wheels: set QORCH_TEST_GPU_IMAGE=1",
)
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_the_gpu_image_installs_and_simulates(tmp_path: Path) -> None:
    installed = install(image("gpu"), tmp_path / "image")
    sys.stderr.write(f"\n[qorch] gpu image install ran in {installed.seconds:.0f} s\n")
    dists = distributions(installed)
    lock = read_lock()
    assert "qiskit-aer" not in dists
    assert dists["qiskit-aer-gpu"][0] == lock["qiskit-aer-gpu"]
    unlocked = {
        name: version
        for name, (version, _) in dists.items()
        if name not in SEED_PACKAGES | {"qorch"} and lock.get(name) != version
    }
    assert not unlocked
    # A CPU pool's worker: the operator sets QORCH_DEVICE=CPU there (with `auto` and no GPU,
    # it fails: qiskit-aer-gpu lists "GPU" among its devices whether or not there is one).
    doc = _bell_on_the_worker(installed, tmp_path, QORCH_DEVICE="CPU")
    assert doc["device"] == "CPU", doc
