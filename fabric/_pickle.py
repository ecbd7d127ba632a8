"""Helpers that let the extension's types round-trip through pickle."""

from ._core import EvalRequest


def rebuild_request(fields):
    """Rebuild an EvalRequest from the field mapping its ``__reduce__`` gave."""
    return EvalRequest(**fields)
