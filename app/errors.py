"""The failure shape every HTTP-facing layer reports to clients."""

from __future__ import annotations


class ClientError(Exception):
    """A failure a client can act on: stable `code`, readable `message`, HTTP `status`."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
