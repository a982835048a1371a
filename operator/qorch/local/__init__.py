"""``qorch run``: HybridWorkflows on this machine, decided by the operator's own code."""
