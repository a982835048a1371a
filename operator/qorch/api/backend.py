"""The ``QuantumBackend`` custom resource (cluster-scoped): one quantum-gateway each."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from qorch.api.meta import Condition, ResourceName, StrictModel, schema_extra


class Provider(StrEnum):
    IBM = "ibm"  # IBM Quantum through qiskit-ibm-runtime (token from a Secret)
    FAKE = "fake"  # qiskit-ibm-runtime local mode with a fake backend (real calibrations)
    AER = "aer"  # ideal qiskit-aer simulator


class SecretKeyRef(StrictModel):
    name: ResourceName
    namespace: ResourceName
    key: str = Field(default="token", min_length=1, max_length=253)


class GatewayRef(StrictModel):
    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "has(self.url) != has(self.serviceName)",
                        "message": "give exactly one of url or serviceName",
                    },
                    {
                        "rule": "!has(self.serviceName) || has(self.namespace)",
                        "message": "serviceName needs namespace",
                    },
                ]
            }
        )
    }

    serviceName: ResourceName | None = Field(
        default=None, description="Service of the quantum-gateway."
    )
    namespace: ResourceName | None = None
    port: int = Field(default=8080, ge=1, le=65535)
    url: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://",
        description="A gateway outside the cluster (instead of serviceName).",
    )

    def base_url(self) -> str:
        if self.url:
            return self.url
        return f"http://{self.serviceName}.{self.namespace}.svc:{self.port}"


class QuantumBackendSpec(StrictModel):
    model_config = StrictModel.model_config | {
        "json_schema_extra": schema_extra(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "self.provider != 'ibm' || has(self.credentialsSecretRef)",
                        "message": "provider ibm needs credentialsSecretRef",
                    },
                    {
                        "rule": "self.provider == 'aer' || has(self.backendName)",
                        "message": "providers ibm and fake need backendName",
                    },
                ]
            }
        )
    }

    provider: Provider
    backendName: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="IBM backend (ibm_torino) or fake backend (fake_torino).",
    )
    numQubits: int = Field(
        default=30, ge=1, le=1000, description="Qubits available (aer: simulation limit)."
    )
    pricePerQpuSecondUSD: float = Field(default=0.0, ge=0, le=1000)
    gateway: GatewayRef | None = Field(default=None, description="Service of the quantum-gateway.")
    credentialsSecretRef: SecretKeyRef | None = None
    instance: str | None = Field(
        default=None, max_length=256, description="IBM Quantum instance (CRN or hub/group/project)."
    )
    executionMode: Literal["job", "batch", "session"] = "job"


class CalibrationSummary(StrictModel):
    medianTwoQubitError: float | None = None
    medianSingleQubitError: float | None = None
    medianReadoutError: float | None = None
    medianT1Seconds: float | None = None
    medianT2Seconds: float | None = None
    updatedAt: str | None = None


class QuantumBackendStatus(StrictModel):
    healthy: bool | None = None
    queueLength: int | None = Field(default=None, ge=0)
    calibration: CalibrationSummary | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=schema_extra(
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
        ),
    )


class QuantumBackend(StrictModel):
    apiVersion: Literal["qorch.io/v1alpha1"] = "qorch.io/v1alpha1"
    kind: Literal["QuantumBackend"] = "QuantumBackend"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: QuantumBackendSpec
    status: QuantumBackendStatus | None = None
