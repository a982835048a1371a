"""Qorch's local development environment: a real Kubernetes control plane (etcd,
kube-apiserver, kube-scheduler, kube-controller-manager built from Go modules), KWOK node
pools, a real Prometheus, quantum gateways and the operator, each started as the process a
cluster would run. ``make demo``, the tests (``tests/``) and the benchmarks (``bench/``)
share it; it is not part of the product (neither the wheel nor the image holds it).

- ``controlplane``: start and stop the control plane (``running``), KWOK nodes (``nodes``)
  and their pod stages (``kwok-stages.yaml``), its PKI (``pki``);
- ``cluster``: a thin ``kubectl`` client over it; ``rbac``: the chart's operator RBAC, as a
  ServiceAccount's kubeconfig;
- ``prometheus``, ``gateway``, ``operator``: the real ``prometheus``, ``qorch gateway`` and
  ``qorch operator`` processes (the operator with the chart's settings: ``CHART_ENV``).
"""
