"""What ``qorch run`` reads: the same YAML a user would ``kubectl apply``.

Files hold HybridWorkflows, and optionally the QuantumBackends and ConfigMaps they name
(a ConfigMap carries a circuit's QASM, ``configMapRef``). Each document is checked by the
same typed models the CRDs are generated from; the first bad one stops the run with the
file, the document's place and the field named. Nothing else in a file is refused, so the
same file can be applied to a cluster (a Namespace, a Secret are skipped, and said so).

A backend a workflow names but no file defines is the local stand-in a user means by it:
``aer`` (or any ``aer-*`` name) the ideal Aer simulator, ``fake-<device>`` (``fake-perth``:
qiskit-ibm-runtime's ``fake_perth``) that IBM device's fake backend with its recorded
calibration; any other name is an error that says how to define it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qorch.api.backend import Provider, QuantumBackend, QuantumBackendSpec
from qorch.api.workflow import HybridWorkflow, HybridWorkflowSpec


class ManifestError(ValueError):
    """A document ``qorch run`` cannot use; the message names the file and the field."""


@dataclass(frozen=True)
class LocalWorkflow:
    name: str
    spec: HybridWorkflowSpec
    source: str  # "file.yaml#2": where it came from, for messages


@dataclass
class LocalManifests:
    workflows: list[LocalWorkflow] = field(default_factory=list)
    backends: dict[str, QuantumBackendSpec] = field(default_factory=dict)
    # ConfigMap name -> its data (the circuits a configMapRef names).
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "file#n: kind Namespace"

    def backend_specs(self) -> dict[str, QuantumBackendSpec]:
        """Every backend the workflows name: the defined ones, else the local stand-in."""
        out: dict[str, QuantumBackendSpec] = {}
        for wf in self.workflows:
            for name in wf.spec.resources.quantumBackends:
                if name in out:
                    continue
                out[name] = self.backends.get(name) or default_backend(name, wf.source)
        return out


def default_backend(name: str, where: str) -> QuantumBackendSpec:
    """The local stand-in for a backend no file defines (see the module docstring)."""
    if name == "aer" or name.startswith("aer-"):
        return QuantumBackendSpec(provider=Provider.AER, backendName="aer_simulator")
    if name.startswith("fake-") and len(name) > len("fake-"):
        device = "fake_" + name[len("fake-") :].replace("-", "_")
        return QuantumBackendSpec(provider=Provider.FAKE, backendName=device)
    raise ManifestError(
        f"{where}: spec.resources.quantumBackends names {name!r}, which no file defines; "
        "add a QuantumBackend document (provider aer or fake) of that name, or name 'aer' "
        "(the Aer simulator) or 'fake-<device>' (e.g. fake-perth) for a local stand-in"
    )


def load(paths: Sequence[Path]) -> LocalManifests:
    """Every document of every file; raises ManifestError on the first bad one."""
    out = LocalManifests()
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ManifestError(f"{path}: not YAML: {exc}") from exc
        for index, doc in enumerate(docs, start=1):
            if doc is None:
                continue
            _add(out, doc, f"{path}#{index}")
    if not out.workflows:
        raise ManifestError(
            f"{', '.join(str(p) for p in paths)}: no HybridWorkflow document to run"
        )
    names = [w.name for w in out.workflows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ManifestError(f"HybridWorkflow {twice[0]!r} is defined more than once")
    _check_config_maps(out)
    return out


def _add(out: LocalManifests, doc: Any, where: str) -> None:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: a document is a mapping (kind, metadata, spec)")
    kind = doc.get("kind")
    name = (
        (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    )
    if kind == "HybridWorkflow":
        model = _validated(HybridWorkflow, doc, where)
        out.workflows.append(LocalWorkflow(_name(name, where), model.spec, where))
    elif kind == "QuantumBackend":
        backend = _validated(QuantumBackend, doc, where)
        if backend.spec.provider is Provider.IBM:
            raise ManifestError(
                f"{where}: QuantumBackend {name!r} is an IBM device; qorch run runs locally "
                "only (provider aer or fake): run it on a cluster, or name a fake-<device>"
            )
        out.backends[_name(name, where)] = backend.spec
    elif kind == "ConfigMap":
        data = doc.get("data") or {}
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ManifestError(f"{where}: ConfigMap data is a mapping of strings")
        out.config_maps[_name(name, where)] = {str(k): v for k, v in data.items()}
    else:
        out.skipped.append(f"{where}: kind {kind} (not run locally)")


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name is missing")
    return name


def _validated(model: Any, doc: dict[str, Any], where: str) -> Any:
    body = {k: v for k, v in doc.items() if k != "status"}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ManifestError(f"{where}: {_problems(exc.errors())}") from None


def _problems(errors: Iterable[Any]) -> str:
    parts = []
    for err in errors:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"{loc.lstrip('.') or '(document)'}: {err['msg']}")
    return "; ".join(parts)


def _check_config_maps(out: LocalManifests) -> None:
    for wf in out.workflows:
        for sub in wf.spec.subtasks:
            source = sub.source
            ref = source.configMapRef if source is not None else None
            if ref is None:
                continue
            data = out.config_maps.get(ref.name)
            if data is None or ref.key not in data:
                what = "has no key " + repr(ref.key) if data is not None else "is not in the files"
                raise ManifestError(
                    f"{wf.source}: subtask {sub.name!r} reads ConfigMap {ref.name!r}, which "
                    f"{what}; add the ConfigMap document to the files given to qorch run"
                )
