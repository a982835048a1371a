"""Record every change of the pods in a namespace, so a test can prove the order of
transitions (gated -> released -> bound -> done) even when they are milliseconds apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config, watch


@dataclass(frozen=True)
class PodObservation:
    event: str
    name: str
    gates: tuple[str, ...]
    node_selector: dict[str, str]
    node: str | None
    phase: str | None


@dataclass
class PodWatcher:
    kubeconfig: str
    namespace: str
    observations: list[PodObservation] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PodWatcher:
        api = client.CoreV1Api(config.new_client_from_config(self.kubeconfig))
        self._thread = threading.Thread(target=self._run, args=(api,), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _run(self, api: client.CoreV1Api) -> None:
        rv = api.list_namespaced_pod(self.namespace).metadata.resource_version
        self._ready.set()
        while not self._stop.is_set():
            w = watch.Watch()
            for ev in w.stream(
                api.list_namespaced_pod, self.namespace, resource_version=rv, timeout_seconds=1
            ):
                pod = ev["object"]
                rv = pod.metadata.resource_version
                self.observations.append(
                    PodObservation(
                        event=ev["type"],
                        name=pod.metadata.name,
                        gates=tuple(g.name for g in pod.spec.scheduling_gates or []),
                        node_selector=dict(pod.spec.node_selector or {}),
                        node=pod.spec.node_name,
                        phase=pod.status.phase if pod.status else None,
                    )
                )
                if self._stop.is_set():
                    w.stop()

    def history(self, pod: str) -> list[PodObservation]:
        return [o for o in self.observations if o.name == pod]
