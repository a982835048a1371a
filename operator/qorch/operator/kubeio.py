"""Pod calls whose answers the operator reads as plain JSON, or not at all.

The Kubernetes client turns every answer into its models (``V1Pod``: milliseconds per pod,
holding the GIL) and Qorch turned them back into dicts (``sanitize_for_serialization``,
as long again): 4 s of the operator's main thread while placing 1,000 pods
(``bench/scale.py --profile``). Unread answers are not decoded at all."""

from __future__ import annotations

from typing import Any

import orjson
from kubernetes.client import CoreV1Api


def read_pod(core: CoreV1Api, name: str, namespace: str) -> dict[str, Any]:
    """The pod as the apiserver serves it (raises ``ApiException``, e.g. 404)."""
    response = core.read_namespaced_pod(name, namespace, _preload_content=False)
    pod: dict[str, Any] = orjson.loads(response.data)
    return pod


def create_pod(core: CoreV1Api, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod as the apiserver stored it."""
    response = core.create_namespaced_pod(namespace, manifest, _preload_content=False)
    pod: dict[str, Any] = orjson.loads(response.data)
    return pod


def patch_pod(core: CoreV1Api, name: str, namespace: str, patch: Any) -> None:
    _done(core.patch_namespaced_pod(name, namespace, patch, _preload_content=False))


def delete_pod(core: CoreV1Api, name: str, namespace: str) -> None:
    _done(core.delete_namespaced_pod(name, namespace, _preload_content=False))


def _done(response: Any) -> None:
    """Read an unread answer to its end and hand its connection back to the pool (an
    undecoded answer keeps it otherwise, and the next call opens a new one)."""
    response.drain_conn()
    response.release_conn()
