"""Keep credentials out of everything Cascade writes: messages, log lines, artifacts, states.

One place decides what a credential looks like. Settings register theirs when they are
loaded (``register_secret`` for a plain secret, ``register_token`` for a token or a bearer
value), and from then on:

- ``redact(text)`` replaces every registered form with ``***``: the plain value and, for a
  secret, its SHA-1 and SHA-512 hex in any letter case (Nightscout accepts either hash as the
  credential itself), plus shapes that carry a credential whatever its value: query
  parameters such as ``token=``, ``api-secret:`` and ``Authorization:`` header echoes, and
  the user-info part of a URL;
- ``redact_bytes(body)`` replaces the registered forms in a response body before it is
  parsed, so a server that echoes the credential cannot put it into the lakehouse;
- ``CascadeError`` redacts its own message (``tasks/errors.py``), so an exception, the
  Prefect state built from it and the command line's last line are clean at the source;
- ``install_log_redaction()`` redacts every log record of the process as it is created
  (message, arguments and traceback text), whichever logger or handler it goes to: the
  console, a file, or Prefect's API and so its database.

A plain value shorter than ``MIN_PLAIN`` characters is not registered (it would blank out
ordinary words); its hashes are. Nightscout refuses an ``API_SECRET`` under 12 characters.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import traceback
from collections.abc import Callable
from typing import Final

import httpx

__all__ = [
    "MASK",
    "MIN_PLAIN",
    "credential_forms",
    "install_log_redaction",
    "redact",
    "redact_bytes",
    "register_secret",
    "register_token",
    "sanitize_url",
]

MASK: Final = "***"
MIN_PLAIN: Final = 6

_lock = threading.Lock()
_forms: set[str] = set()
_pattern: re.Pattern[str] | None = None
_byte_forms: tuple[bytes, ...] = ()

# Shapes that carry a credential whatever its value.
_QUERY_KEYS: Final = frozenset({"token", "secret", "api_secret", "api-secret", "apisecret",
                                "access_token", "jwt", "password"})
_SHAPES: Final = (
    # api-secret: <hash>, "api-secret": "<hash>", token=..., "password": "..."
    (re.compile(r"(?i)((?:api[-_]?secret|access[-_]?token|token|secret|password|jwt)"
                r"[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"'&,;})\]]+"), r"\g<1>***"),
    # Authorization: Bearer <value> / Basic <value>, as a header or in a dict's repr
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+|token\s+)?)"
                r"(?!\*\*\*)[^\s\"',;})\]]+"), r"\g<1>***"),
    # https://user:password@host
    (re.compile(r"(?i)\b((?:https?|s3|postgres(?:ql)?|trino)://)[^/\s@:]+:[^/\s@]+@"),
     r"\g<1>***@"),
)


def credential_forms(secret: str) -> dict[str, str]:
    """Every form of a plain api-secret that works as the credential: the plain value and
    its SHA-1 and SHA-512 hex (lower case; ``redact`` matches any case)."""
    raw = secret.encode()
    return {"plain": secret, "sha1": hashlib.sha1(raw).hexdigest(),
            "sha512": hashlib.sha512(raw).hexdigest()}


def register_secret(secret: str) -> None:
    """Redact this plain secret and its SHA-1 and SHA-512 hex from now on."""
    forms = credential_forms(secret)
    _add([v for k, v in forms.items() if k != "plain" or len(v) >= MIN_PLAIN])


def register_token(token: str) -> None:
    """Redact this token (or JWT, or bearer value) from now on."""
    if len(token) >= MIN_PLAIN:
        _add([token])


def _add(values: list[str]) -> None:
    global _pattern, _byte_forms
    with _lock:
        new = {v for v in values if v} - _forms
        if not new:
            return
        _forms.update(new)
        ordered = sorted(_forms, key=len, reverse=True)  # a longer form first
        _pattern = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)
        cases = {c for v in ordered for c in (v, v.lower(), v.upper())}
        _byte_forms = tuple(sorted((c.encode() for c in cases), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered credential and every credential-shaped value as ``***``."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for shape, replacement in _SHAPES:
        text = shape.sub(replacement, text)
    return text


def redact_bytes(body: bytes) -> bytes:
    """``body`` with every registered credential replaced by ``***`` (a few substring
    searches; the body is copied only when one is found)."""
    for form in _byte_forms:
        if form in body:
            body = body.replace(form, MASK.encode())
    return body


def sanitize_url(url: httpx.URL | str) -> str:
    """``url`` without user info and with credential query parameters as ``***``."""
    parsed = httpx.URL(str(url)).copy_with(username=None, password=None)
    items = parsed.params.multi_items()
    if any(k.lower() in _QUERY_KEYS for k, _ in items):
        parsed = parsed.copy_with(params=[(k, MASK if k.lower() in _QUERY_KEYS else v)
                                          for k, v in items])
    return redact(str(parsed))


# ----------------------------------------------------------------------------- logging

_installed = False
_quiet: tuple[type[BaseException], ...] = ()


def install_log_redaction(quiet: tuple[type[BaseException], ...] = ()) -> None:
    """Redact every log record this process creates, from now on (idempotent).

    Args:
        quiet: exception types whose records keep their message but lose the traceback:
            errors whose message already says what failed and what to do.
    """
    global _installed, _quiet
    with _lock:
        _quiet = tuple(dict.fromkeys((*_quiet, *quiet)))
        if _installed:
            return
        _installed = True
        logging.setLogRecordFactory(_redacting(logging.getLogRecordFactory()))


def _redacting(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logger's to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            _clean_traceback(record, record.exc_info[1])
        return record

    return factory


def _clean_traceback(record: logging.LogRecord, exc: BaseException) -> None:
    if _quiet and _caused_by(exc, _quiet):
        record.exc_info, record.exc_text = None, None
        return
    text = "".join(traceback.format_exception(exc)).rstrip("\n")
    clean = redact(text)
    if clean != text:
        record.exc_text = clean


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
