"""Quantum gateway: the service behind a QuantumBackend, and clients of it."""
