"""The names of the policies the twin replays (``qorch.sim.policies``), in a module of their
own so that ``qorch simulate --policy`` can offer them without loading the twin (the ``sim``
extra may be missing)."""

from __future__ import annotations

POLICIES = (
    "static",
    "least-busy",
    "qonductor",
    "qorch",
    "oracle",
    "qorch-static",
    "qorch-fidelity",
)
