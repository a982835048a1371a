"""Kopf handlers and the code that applies plans: the only layer that writes to the API."""
