"""Outcomes of a reconcile step that are not successes, each with a CamelCase reason."""

from __future__ import annotations


class InvalidSpecError(Exception):
    """The resource cannot be reconciled as written (permanent: not retried until the spec
    changes); the reason and message land in status."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class InputNotReadyError(Exception):
    """An input is not ready yet; reconciliation resumes when it changes (no error)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
