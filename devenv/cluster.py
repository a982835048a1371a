"""Helpers tests use against the real control plane: kubectl, JSON reads, waiting on a
condition (never a bare sleep)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from devenv.controlplane import ControlPlane

T = TypeVar("T")
_counter = itertools.count()


class Cluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def new_namespace(self, hint: str) -> str:
        slug = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-")
        name = f"t{next(_counter)}-{slug}"
        self.plane.kubectl("create", "namespace", name)
        return name

    def apply(self, manifest: str, namespace: str | None = None, check: bool = True) -> Any:
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        out = self.plane.kubectl(*args, input=manifest, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl apply failed: {out.stderr}")
        return out

    def json_patch(
        self, kind: str, name: str, namespace: str, ops: list[dict[str, Any]], check: bool = True
    ) -> Any:
        return self.plane.kubectl(
            "patch",
            kind,
            name,
            "-n",
            namespace,
            "--type",
            "json",
            "-p",
            json.dumps(ops),
            check=check,
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        out = self.plane.kubectl(*args, check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise RuntimeError(out.stderr)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def list(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.plane.kubectl(*args).stdout)["items"]
        return items

    def events(self, namespace: str, involved: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.list("events", namespace)
            if e.get("involvedObject", {}).get("name") == involved
        ]


def wait_for(
    what: str, fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
