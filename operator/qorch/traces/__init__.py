"""Typed readers of the real traces (IBM queues, run times, calibrations, a GPU cluster).

Used by training (``qorch train``) and the digital twin; a bad or truncated file raises
``TraceError`` naming the file and line, never a silent skip."""
