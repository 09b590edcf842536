"""Cascade's exceptions, in one place.

    CascadeError
    ├── ConfigError(CascadeError, ValueError)     a setting is missing or wrong
    ├── NightscoutError                           the source misbehaved
    │   ├── NightscoutAuthError                   401/403: wrong secret or token
    │   ├── NightscoutNotFound                    404: wrong URL or API path
    │   ├── NightscoutUnavailable                 429/5xx/timeouts past the retry budget
    │   └── NightscoutBadResponse(…, ValueError)  a body that is not the JSON we expect
    ├── ContractError                             too many rows broke a table's contract
    ├── BranchError                               a branch/tag operation is not possible
    │   ├── BranchNotFound(BranchError, LookupError)
    │   ├── BranchExists
    │   └── BranchConflict                        main moved under a table the branch changed
    ├── ValidationFailed                          audit checks failed; nothing promoted
    ├── PublishError                              marts could not be published
    └── ServiceUnavailable                        a lakehouse or query service did not answer

Messages say what failed, where, and what to do. They never carry a secret.
"""

from __future__ import annotations

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
    "NightscoutNotFound",
    "NightscoutUnavailable",
    "PublishError",
    "ServiceUnavailable",
    "ValidationFailed",
    "unreachable",
]


class CascadeError(Exception):
    """Base of every error Cascade raises on purpose."""


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


class NightscoutBadResponse(NightscoutError, ValueError):
    """Nightscout answered with something that is not the JSON we expected."""


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
