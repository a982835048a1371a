"""Qiskit at the edge, shared by the gateway, the worker and the operator: parsing user
circuits once, and turning primitive results into small JSON documents."""
