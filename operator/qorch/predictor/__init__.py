"""Predictive model served by onnxruntime."""
