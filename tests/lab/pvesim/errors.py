"""The simulator's API error: what pveproxy answers for a refused or failed request."""

from __future__ import annotations


class ApiError(Exception):
    """An API error: HTTP status, the message of the status line, optional param errors.

    Like PVE's handlers, a plain failure (``die``) is 500, a parameter problem 400 with
    ``errors`` (PVE::Exception::raise_param_exc), a permission problem 403
    (raise_perm_exc) and a failed login 401.
    """

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def param_error(name: str, message: str) -> ApiError:
    """Give the 400 error PVE::Exception::raise_param_exc({name => message}) gives."""
    return ApiError(400, "Parameter verification failed.", {name: message})
