"""What ``qorch run`` reads: the files a user would ``kubectl apply``, checked by the same
typed models, every bad one refused with the file, the document and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from qorch.api.backend import Provider
from qorch.local.manifests import ManifestError, load

CIRCUIT = """
  - name: c
    circuit:
      shots: 100
      qasm: |
        OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; bit[1] b; h q[0]; b = measure q;
"""


def workflow(backends: str = "[aer]", extra: str = "", name: str = "w") -> str:
    return f"""apiVersion: qorch.io/v1alpha1
kind: HybridWorkflow
metadata: {{name: {name}}}
spec:
  resources: {{quantumBackends: {backends}}}
  subtasks:{CIRCUIT}{extra}"""


def write(tmp_path: Path, text: str, name: str = "w.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_workflow_and_its_local_stand_ins(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("[aer, fake-perth]") + "\n---\nkind: Namespace\n"
                 "apiVersion: v1\nmetadata: {name: x}\n")  # fmt: skip
    loaded = load([path])
    assert [w.name for w in loaded.workflows] == ["w"]
    specs = loaded.backend_specs()
    assert specs["aer"].provider is Provider.AER
    assert specs["fake-perth"].provider is Provider.FAKE
    assert specs["fake-perth"].backendName == "fake_perth"
    assert loaded.skipped == [f"{path}#2: kind Namespace (not run locally)"]


def test_a_quantum_backend_document_defines_the_name(tmp_path: Path) -> None:
    backend = """---
apiVersion: qorch.io/v1alpha1
kind: QuantumBackend
metadata: {name: my-device}
spec: {provider: fake, backendName: fake_lagos, pricePerQpuSecondUSD: 0.5}
"""
    loaded = load([write(tmp_path, workflow("[my-device]") + backend)])
    spec = loaded.backend_specs()["my-device"]
    assert (spec.provider, spec.backendName, spec.pricePerQpuSecondUSD) == (
        Provider.FAKE,
        "fake_lagos",
        0.5,
    )


def test_an_unknown_backend_says_how_to_define_it(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("[ibm-kyiv]"))
    with pytest.raises(ManifestError, match=r"w\.yaml#1: .*'ibm-kyiv'.*QuantumBackend") as err:
        load([path]).backend_specs()
    assert "fake-perth" in str(err.value)


def test_an_ibm_backend_is_refused_locally(tmp_path: Path) -> None:
    backend = """---
apiVersion: qorch.io/v1alpha1
kind: QuantumBackend
metadata: {name: kyiv}
spec:
  provider: ibm
  backendName: ibm_kyiv
  credentialsSecretRef: {name: ibm, namespace: qorch-system, key: token}
"""
    with pytest.raises(ManifestError, match=r"#2: QuantumBackend 'kyiv' is an IBM device"):
        load([write(tmp_path, workflow("[kyiv]") + backend)])


def test_a_bad_field_is_named_with_its_file_and_document(tmp_path: Path) -> None:
    bad = workflow().replace("shots: 100", "shots: -5")
    with pytest.raises(ManifestError, match=r"w\.yaml#1: spec\.subtasks\[0\]\.circuit\.shots"):
        load([write(tmp_path, bad)])


def test_unknown_fields_are_refused_as_the_crd_would(tmp_path: Path) -> None:
    bad = workflow().replace("shots: 100", "shots: 100\n      shotz: 3")
    with pytest.raises(ManifestError, match=r"shotz"):
        load([write(tmp_path, bad)])


def test_a_config_map_of_the_files_carries_a_circuit(tmp_path: Path) -> None:
    text = """apiVersion: qorch.io/v1alpha1
kind: HybridWorkflow
metadata: {name: w}
spec:
  resources: {quantumBackends: [aer]}
  subtasks:
  - name: c
    circuit:
      shots: 10
      configMapRef: {name: circuits, key: bell.qasm}
"""
    cm = """---
apiVersion: v1
kind: ConfigMap
metadata: {name: circuits}
data:
  bell.qasm: 'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; h q[0]; cx q[0], q[1];'
"""
    assert (
        load([write(tmp_path, text + cm)])
        .config_maps["circuits"]["bell.qasm"]
        .startswith("OPENQASM")
    )
    with pytest.raises(ManifestError, match=r"ConfigMap 'circuits', which is not in the files"):
        load([write(tmp_path, text, "alone.yaml")])
    with pytest.raises(ManifestError, match=r"has no key 'bell.qasm'"):
        load([write(tmp_path, text + cm.replace("bell.qasm:", "other:"), "wrong.yaml")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no HybridWorkflow document to run"),
        ("[1, 2]", "#1: a document is a mapping"),
        ("kind: HybridWorkflow\nspec: {}\n", "metadata.name is missing|spec"),
        ("a: [", "not YAML"),
    ],
)
def test_files_that_cannot_run(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load([write(tmp_path, text)])


def test_a_missing_file_and_a_name_given_twice(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: cannot read it"):
        load([tmp_path / "nope.yaml"])
    one = write(tmp_path, workflow(), "one.yaml")
    two = write(tmp_path, workflow(), "two.yaml")
    with pytest.raises(ManifestError, match=r"'w' is defined more than once"):
        load([one, two])
