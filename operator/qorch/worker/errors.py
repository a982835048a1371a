"""Errors of ``qorch worker`` shared by its modes."""

from __future__ import annotations


class BadInputError(ValueError):
    """The pod's input (environment, files) cannot be run; exit code 2, message names it."""
