"""Digital twin: runs the orchestrator's ``plan`` on a simulated clock."""
