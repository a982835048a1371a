"""Shared pieces of the API: strict base model, conditions, names."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

GROUP = "qorch.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A DNS-1123 label. Subtask names end up in pod names
# (<workflow>-<subtask>-<attempt>), so both are capped to keep those under 63.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SubtaskName = Annotated[str, Field(min_length=1, max_length=30, pattern=DNS_LABEL)]
ResourceName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


class StrictModel(BaseModel):
    """Unknown fields are an error, as the apiserver's structural schema prunes them."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, validate_assignment=True, frozen=False
    )


class Condition(StrictModel):
    """A Kubernetes-style condition: bounded list keyed by ``type``."""

    type: str = Field(max_length=64, description="Condition type, e.g. Valid, Ready, Succeeded.")
    status: str = Field(pattern=r"^(True|False|Unknown)$", description="True, False or Unknown.")
    reason: str = Field(max_length=64, description="Machine-readable CamelCase reason.")
    message: str = Field(default="", max_length=4096, description="Human-readable detail.")
    lastTransitionTime: str | None = Field(default=None, description="RFC 3339 time of change.")
    observedGeneration: int | None = Field(default=None, ge=0)


def schema_extra(**extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` helper so CEL rules and x-kubernetes markers read clearly."""
    return extra
