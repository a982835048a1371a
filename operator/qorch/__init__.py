"""Qorch: a Kubernetes operator for hybrid quantum-classical workflows."""

__version__ = "0.1.0"
