"""Domain errors raised by services; the API and pages turn them into clear messages."""


class DomainError(Exception):
    """A request that breaks a rule of the workflow. The message is shown to the user."""

    status_code = 400


class NotFound(DomainError):
    status_code = 404


class PermissionDenied(DomainError):
    """The rule forbids this user this act (e.g. an MD deciding on their own mask)."""

    status_code = 403


class Conflict(DomainError):
    status_code = 409
