"""Run the operator with the chart's ClusterRole instead of cluster-admin: a
ServiceAccount bound to ``charts/qorch/files/clusterrole-rules.yaml`` and a kubeconfig
holding a token for it, so the tests prove the least-privilege RBAC is enough."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from devenv.controlplane import REPO, ControlPlane

RULES = REPO / "charts" / "qorch" / "files" / "clusterrole-rules.yaml"
NAMESPACE = "qorch-system"
ACCOUNT = "qorch-operator"


def least_privilege_kubeconfig(plane: ControlPlane, path: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text())
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": ACCOUNT, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": ACCOUNT},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ACCOUNT},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ACCOUNT,
            },
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}],
        },
    ]
    plane.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    token = plane.kubectl(
        "create", "token", ACCOUNT, "-n", NAMESPACE, "--duration", "4h"
    ).stdout.strip()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "qorch-test",
                        "cluster": {
                            "server": plane.server,
                            "certificate-authority": str(plane.pki.ca_cert),
                        },
                    }
                ],
                "users": [{"name": ACCOUNT, "user": {"token": token}}],
                "contexts": [
                    {"name": ACCOUNT, "context": {"cluster": "qorch-test", "user": ACCOUNT}}
                ],
                "current-context": ACCOUNT,
            }
        )
    )
    return path
