"""A fake device's noise model is serialised once per backend object, not on every run
(``serialise_noise_once``), and the simulations it runs are the same as before."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from qiskit_aer.noise import NoiseModel, depolarizing_error

import qorch.gateway.backends as backends
from qorch.api.backend import Provider
from qorch.gateway.backends import build_backend
from qorch.gateway.noise import SerialisedOnceNoiseModel
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
    monkeypatch.setattr(backends, "serialise_noise_once", lambda backend: None)
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
    backends.serialise_noise_once(adapter.backend)
    assert getattr(adapter.backend.options, "noise_model", None) is None
    prepared = [adapter.prepare(load_qasm(GHZ3), ())]
    counts = adapter.run_here("sampler", prepared, 100).result()[0].data.c.get_counts()
    assert set(counts) <= {"000", "111"}
