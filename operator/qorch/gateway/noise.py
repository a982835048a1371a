"""A fake device's noise model, serialised for Aer once per backend object.

Aer turns the noise model into a JSON-safe dict (``to_dict(serializable=True)``, a JSON round
trip of every error) on every ``run`` before it hands it to its C++ simulator: on
fake_manila a third of a one-circuit call, paid again by every batch the gateway runs. The
gateway never changes a backend's noise model (a new calibration is a new backend object),
so the dict made once is the dict every run would make, and Aer's C++ only reads it.
"""

from __future__ import annotations

import copy
from typing import Any

from qiskit_aer.noise import NoiseModel


class SerialisedOnceNoiseModel(NoiseModel):  # type: ignore[misc]
    """A ``NoiseModel`` nobody changes any more: ``to_dict(serializable=True)`` is made once
    and the same dict returned after (shared: do not change it). A copy or a pickle is a
    plain ``NoiseModel`` with the same errors, free to change: Aer deep-copies the model
    to add the errors a circuit carries, and that copy must serialise afresh."""

    def to_dict(self, serializable: bool = False) -> dict[str, Any]:
        if not serializable:
            return super().to_dict(serializable)  # type: ignore[no-any-return]
        cached: dict[str, Any] | None = self.__dict__.get("_serialised")
        if cached is None:
            cached = super().to_dict(True)
            self.__dict__["_serialised"] = cached
        return cached

    def plain(self) -> NoiseModel:
        """A plain ``NoiseModel`` sharing this one's errors (no cached dict)."""
        clone = NoiseModel.__new__(NoiseModel)
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_serialised"})
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> NoiseModel:
        clone = self.plain()
        memo[id(self)] = clone
        clone.__dict__ = copy.deepcopy(clone.__dict__, memo)
        return clone

    def __reduce__(self) -> Any:
        return self.plain().__reduce__()
