"""Default prices, from published price lists (cited in ``models/MODEL_CARD.md``, "Prices").

A QuantumBackend's ``pricePerQpuSecondUSD`` and a pool's ``pricePerHourUSD`` override them;
these are what costs are predicted and counted with when a resource says nothing (an IBM
QuantumBackend without a price, a pool without one; the chart writes the IBM price into
the QuantumBackends it creates).
"""

from __future__ import annotations

from typing import Final

from qorch.api.workflow import ClassicalPool

# IBM Quantum Pay-As-You-Go plan: USD 1.60 per second of quantum usage (ibm.com/quantum/pricing).
IBM_PAY_AS_YOU_GO_USD_PER_QPU_SECOND: Final = 1.60
# A worker pod requests one core: one vCPU of an AWS m7g.large (2 vCPU, 8 GiB, on-demand
# USD 0.0816 per hour in us-east-1).
CPU_POD_USD_PER_HOUR: Final = 0.0816 / 2
# A GPU worker pod takes one GPU: an AWS g5.xlarge (one NVIDIA A10G, 4 vCPU, on-demand
# USD 1.006 per hour in us-east-1).
GPU_POD_USD_PER_HOUR: Final = 1.006


def pool_price_per_hour(pool: ClassicalPool) -> float:
    """USD per hour of one worker pod on ``pool``: its own price, else the default."""
    if pool.pricePerHourUSD is not None:
        return pool.pricePerHourUSD
    return GPU_POD_USD_PER_HOUR if pool.gpu else CPU_POD_USD_PER_HOUR


def pod_usd(pool: ClassicalPool, seconds: float) -> float:
    """What one worker pod on ``pool`` costs for ``seconds``."""
    return seconds * pool_price_per_hour(pool) / 3600.0
