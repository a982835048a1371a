"""What a fake device's simulator does with its noise model on every run is made cheap
(``prepare_noise_model``: serialised once, restricted to what a batch meets, as Kraus
channels), and the simulations it runs are the same as before."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import SuperOp
from qiskit_aer.noise import NoiseModel, depolarizing_error

import qorch.gateway.backends as backends
from qorch.api.backend import Provider
from qorch.gateway.backends import build_backend
from qorch.gateway.noise import SerialisedOnceNoiseModel, operations_used
from qorch.quantum.circuits import load_qasm

GHZ3 = (
    'OPENQASM 3.0; include "stdgates.inc"; qubit[3] q; bit[3] c; '
    "h q[0]; cx q[0], q[1]; cx q[1], q[2]; c = measure q;"
)


def seeded_counts(runs: int = 3) -> tuple[Any, list[dict[str, int]]]:
    adapter = build_backend(Provider.FAKE, "fake_manila", isolate=False)
    adapter.backend.set_options(seed_simulator=11)
    prepared = [adapter.prepare(load_qasm(GHZ3), ())]
    out = []
    for _ in range(runs):
        result = adapter.run_here("sampler", prepared, 1000).result()
        out.append(result[0].data.c.get_counts())
    return adapter, out


def test_the_noise_model_is_serialised_once_and_runs_simulate_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter, frozen = seeded_counts()
    noise = adapter.backend.options.noise_model
    first = noise.to_dict(serializable=True)
    assert noise.to_dict(serializable=True) is first  # made once
    assert noise.to_dict() is not first  # the plain form is still built fresh
    assert len(set(map(str, frozen))) == 1  # nothing a run did changed the next one
    monkeypatch.setattr(backends, "prepare_noise_model", lambda backend: None)
    adapter, plain = seeded_counts()
    assert adapter.backend.options.noise_model.to_dict(serializable=True) is not (
        adapter.backend.options.noise_model.to_dict(serializable=True)
    )
    assert plain == frozen
    assert set(plain[0]) - {"000", "111"}  # noisy: the noise model is in effect


def test_a_copy_of_the_model_is_a_plain_one_that_serialises_what_it_holds() -> None:
    """Aer deep-copies the model to add the errors a circuit carries: the copy must not
    answer with the original's dict."""
    adapter, _ = seeded_counts(runs=1)
    noise = adapter.backend.options.noise_model
    assert isinstance(noise, SerialisedOnceNoiseModel)
    before = noise.to_dict(serializable=True)
    copied = copy.deepcopy(noise)
    assert type(copied) is NoiseModel
    copied.add_quantum_error(depolarizing_error(0.1, 2), ["cx"], [0, 4])  # not a coupling
    assert len(copied.to_dict(serializable=True)["errors"]) == len(before["errors"]) + 1
    assert noise.to_dict(serializable=True) is before
    restored = pickle.loads(pickle.dumps(noise))
    assert type(restored) is NoiseModel and restored.to_dict() == noise.to_dict()


def test_a_backend_without_a_noise_model_is_left_alone() -> None:
    adapter = build_backend(Provider.AER, None, isolate=False)
    backends.prepare_noise_model(adapter.backend)
    assert getattr(adapter.backend.options, "noise_model", None) is None
    prepared = [adapter.prepare(load_qasm(GHZ3), ())]
    counts = adapter.run_here("sampler", prepared, 100).result()[0].data.c.get_counts()
    assert set(counts) <= {"000", "111"}


def fake_manila() -> Any:
    adapter = build_backend(Provider.FAKE, "fake_manila", isolate=False)
    adapter.run_here("sampler", [adapter.prepare(load_qasm(GHZ3), ())], 10).result()
    return adapter


def test_a_run_gets_only_the_errors_its_circuits_meet_each_the_same_channel() -> None:
    adapter = fake_manila()
    noise = adapter.backend.options.noise_model
    isa = adapter.prepare(load_qasm(GHZ3), ()).isa
    used = operations_used([isa])
    assert used is not None and any(name == "measure" for name, _ in used)
    restricted = noise.for_circuits([isa])
    assert noise.for_circuits([isa]) is restricted  # kept per operation set
    kept = {
        (name, tuple(qubits))
        for name, errors in restricted._local_quantum_errors.items()
        for qubits in errors
    }
    whole = {
        (name, tuple(qubits))
        for name, errors in noise._local_quantum_errors.items()
        for qubits in errors
    }
    assert kept == whole & used and kept < whole  # fewer errors, none the circuit meets lost
    for name, qubits in kept:
        mine = restricted._local_quantum_errors[name][qubits]
        theirs = noise._local_quantum_errors[name][qubits]
        assert mine.size == 1  # one Kraus channel (the device model: a mixture of several)
        assert SuperOp(mine) == SuperOp(theirs)  # ... equal to the device's error
    assert any(noise._local_quantum_errors[n][q].size > 1 for n, q in kept)
    measured = {qubits for name, qubits in used if name == "measure"}
    assert set(restricted._local_readout_errors) == measured
    assert restricted._custom_noise_passes == noise._custom_noise_passes


def test_statevector_runs_draw_counts_from_the_same_distribution() -> None:
    """The statevector method draws each shot's trajectory: through Kraus channels the
    random numbers differ, the distribution may not (20,000 shots: sampling noise in the
    total variation distance is about 0.01)."""
    adapter = fake_manila()
    sim = adapter.backend.sim
    isa = adapter.prepare(load_qasm(GHZ3), ()).isa
    whole = adapter.backend.options.noise_model.plain()

    def probabilities(**options: Any) -> dict[str, float]:
        result = sim.run(isa, shots=20_000, method="statevector", seed_simulator=5, **options)
        counts = result.result().get_counts()
        return {k: v / 20_000 for k, v in counts.items()}

    mine, theirs = probabilities(), probabilities(noise_model=whole)
    distance = sum(abs(mine.get(k, 0) - theirs.get(k, 0)) for k in {*mine, *theirs}) / 2
    assert distance < 0.03
    assert mine != theirs  # other random numbers (else this test would not test Kraus)


def test_a_delay_is_still_noised_by_the_relaxation_pass() -> None:
    adapter = fake_manila()
    adapter.backend.set_options(seed_simulator=3)
    qasm = (
        'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; bit[1] c; '
        "x q[0]; delay[200us] q[0]; c[0] = measure q[0];"
    )
    prepared = [adapter.prepare(load_qasm(qasm), ())]
    counts = adapter.run_here("sampler", prepared, 2000).result()[0].data.c.get_counts()
    whole = adapter.backend.options.noise_model.plain()
    direct = adapter.backend.sim.run(prepared[0].isa, shots=2000, noise_model=whole)
    assert counts.get("0", 0) > 200  # 200 us is several T1 on manila: mostly decayed
    assert abs(counts.get("0", 0) - direct.result().get_counts().get("0", 0)) < 150


def _if_test(qc: QuantumCircuit) -> None:
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):  # control flow: Aer inlines it
        qc.x(1)


@pytest.mark.parametrize(
    "build",
    [
        lambda qc: qc.x(0, label="pulse"),  # errors matched by label
        lambda qc: qc.initialize([0, 1], [1]),  # Aer expands it
        lambda qc: qc.cx(0, 1, ctrl_state=0),  # Aer adds X gates (name cx_o0)
        _if_test,
    ],
)
def test_circuits_whose_noise_cannot_be_told_run_with_the_whole_model(build: Any) -> None:
    qc = QuantumCircuit(2, 2)
    build(qc)
    qc.measure([0, 1], [0, 1])
    assert operations_used([qc]) is None
    assert operations_used([QuantumCircuit(2)]) == frozenset()
    adapter = fake_manila()
    noise = adapter.backend.options.noise_model
    assert noise.for_circuits([qc]) is noise


def test_a_run_that_meets_most_errors_gets_the_whole_model() -> None:
    adapter = fake_manila()
    noise = adapter.backend.options.noise_model
    qc = QuantumCircuit(5)
    for name, errors in noise._local_quantum_errors.items():
        for qubits in errors:
            if name in ("sx", "x", "cx"):
                getattr(qc, name)(*qubits)
    assert noise.for_circuits([qc]) is noise


def test_a_run_that_names_its_own_noise_model_keeps_it() -> None:
    adapter = fake_manila()
    isa = adapter.prepare(load_qasm(GHZ3), ()).isa
    ideal = NoiseModel()
    counts = adapter.backend.sim.run(isa, shots=500, noise_model=ideal).result().get_counts()
    assert set(counts) <= {"000", "111"}
