"""Errors a user sees: one line naming the file and the field."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input detected before any compute.

    ``str(err)`` is one line: ``<file>: <field>: <message>`` (file/field omitted when unknown).
    """

    def __init__(self, message: str, file: str | None = None, field: str | None = None):
        self.file = None if file is None else str(file)
        self.field = field
        self.message = message
        parts = [p for p in (self.file, field) if p]
        super().__init__(": ".join(parts + [message]))
