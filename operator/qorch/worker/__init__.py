"""Entry point of classical subtask pods."""
