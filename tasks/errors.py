"""Cascade's exceptions, in one place.

    CascadeError
    ├── ConfigError(CascadeError, ValueError)     a setting is missing or wrong
    ├── NightscoutError                           the source misbehaved
    │   ├── NightscoutAuthError                   401/403: wrong secret or token
    │   ├── NightscoutNotFound                    404: wrong URL or API path
    │   ├── NightscoutUnavailable                 429/5xx/timeouts/deadline past the retry budget
    │   ├── NightscoutRedirected                  3xx: the site moved (its Location is named)
    │   ├── NightscoutBadResponse(…, ValueError)  a body that is not the JSON we expect
    │   │   └── NightscoutTooLarge                over the size cap even for one document
    │   └── NightscoutFeedUnavailable             no API v3 change feed to read (no v3,
    │                                             no token, no read permission)
    ├── ContractError                             too many rows broke a table's contract
    ├── BranchError                               a branch/tag operation is not possible
    │   ├── BranchNotFound(BranchError, LookupError)
    │   ├── BranchExists
    │   └── BranchConflict                        main moved under a table the branch changed
    ├── ValidationFailed                          audit checks failed; nothing promoted
    ├── PublishError                              marts could not be published
    └── ServiceUnavailable                        a lakehouse or query service did not answer

Messages say what failed, where, and what to do. They never carry a secret: every
``CascadeError`` passes its message through ``tasks.redaction.redact``, and importing this
module installs the log redaction (``tasks.redaction.install_log_redaction``) for the
process, with tracebacks left out of the log records of these errors (their message says
it all; set ``CASCADE_TRACEBACKS=1`` to keep them).
"""

from __future__ import annotations

import os

from tasks.redaction import install_log_redaction, redact

__all__ = [
    "BranchConflict",
    "BranchError",
    "BranchExists",
    "BranchNotFound",
    "CascadeError",
    "ConfigError",
    "ContractError",
    "NightscoutAuthError",
    "NightscoutBadResponse",
    "NightscoutError",
    "NightscoutFeedUnavailable",
    "NightscoutNotFound",
    "NightscoutRedirected",
    "NightscoutTooLarge",
    "NightscoutUnavailable",
    "PublishError",
    "ServiceUnavailable",
    "ValidationFailed",
    "unreachable",
]


class CascadeError(Exception):
    """Base of every error Cascade raises on purpose; its message is redacted."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(CascadeError, ValueError):
    """A setting is missing or malformed."""


class NightscoutError(CascadeError):
    """The Nightscout source answered in a way we cannot use."""


class NightscoutAuthError(NightscoutError):
    """Nightscout refused our credentials (401/403)."""


class NightscoutNotFound(NightscoutError):
    """Nightscout answered 404: the site URL or API path is wrong."""


class NightscoutUnavailable(NightscoutError):
    """Nightscout kept failing (429/5xx/timeouts) after every retry."""


class NightscoutRedirected(NightscoutError):
    """Nightscout answered a redirect: the site moved, or the URL is not the site itself.

    Cascade does not follow it (the credential would go wherever the redirect points).
    """

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.location = redact(location) if location is not None else None


class NightscoutBadResponse(NightscoutError, ValueError):
    """Nightscout answered with something that is not the JSON we expected."""


class NightscoutTooLarge(NightscoutBadResponse):
    """An answer stayed over the size cap even when asked for the fewest documents."""


class NightscoutFeedUnavailable(NightscoutError):
    """The site offers no API v3 change feed Cascade may read: the server predates v3, no
    access token is configured, or the token's roles do not allow reading a collection.
    Not fatal: the reconcile window finds edits and deletions by time instead."""


class ContractError(CascadeError):
    """More rows broke a table's contract than the run allows."""


class BranchError(CascadeError):
    """A branch or tag operation cannot be done."""


class BranchNotFound(BranchError, LookupError):
    """No branch or tag with that name."""


class BranchExists(BranchError):
    """A branch or tag with that name already exists."""


class BranchConflict(BranchError):
    """The merge would overwrite changes made on the target since the branch forked."""

    def __init__(self, message: str, tables: list[str]) -> None:
        super().__init__(message)
        self.tables = tables


class ValidationFailed(CascadeError):
    """One or more audit checks failed on a branch; nothing was promoted."""


class PublishError(CascadeError):
    """Marts could not be published to the marts database."""


class ServiceUnavailable(CascadeError):
    """A service of the lakehouse (Nessie, the object store, Trino) could not be reached."""


def unreachable(exc: BaseException) -> BaseException | None:
    """The connection failure behind ``exc`` (refused, reset, timed out, name not found),
    following its causes; None when ``exc`` is something else.

    Client libraries wrap these differently (httpx, requests, botocore, aiohttp, trino):
    all of them are, or are caused by, an ``OSError``/``ConnectionError``, or are named so.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if isinstance(current, (ConnectionError, TimeoutError)) or "Connect" in name \
                or name in {"ReadTimeout", "ConnectTimeout", "EndpointConnectionError"}:
            return current
        current = current.__cause__ or current.__context__
    return None


install_log_redaction(quiet=() if os.environ.get("CASCADE_TRACEBACKS") else (CascadeError,))
