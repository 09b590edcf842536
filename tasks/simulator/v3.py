"""The simulator's API v3 (and the writes of v1), as cgm-remote-monitor 15.x answers them.

* ``GET /api/v2/authorization/request/<accessToken>``: a JWT for the site's access token
  (``{token, sub, permissionGroups, iat, exp}``), valid ``jwt_lifetime_s`` (8 h on the
  server); a wrong token is a 401.
* Every ``/api/v3/...`` call but ``/version`` wants ``Authorization: Bearer <jwt>``: a
  missing, bad or expired JWT is a 401; a collection the token may not read is a 403.
* ``GET /api/v3/version``: ``srvDate`` (the server's clock), no auth.
* ``GET /api/v3/{collection}/history/{ms}``: documents whose ``srvModified`` is strictly
  after ``ms``, oldest change first, ``limit`` at most 1000 (more is a 400), soft-deleted
  ones included with ``isValid: false``. The path value is read as the server reads it: a
  number below 946684800000 (2000-01-01 in ms) is taken as *seconds*, and one still below
  that after scaling (``/history/0``) is refused with a 400. Without a path value the
  ``Last-Modified`` request header is used, floored to whole seconds, with ``>=``. The
  response's ``Last-Modified`` header is the newest ``srvModified``, in whole seconds, and
  ``ETag`` is ``W/"<ms>"``. Documents written through v1 never appear.
* ``POST /api/v3/{collection}``, ``PATCH``/``DELETE /api/v3/{collection}/{identifier}``
  (``?permanent=true`` removes for good); v1's ``POST /api/v1/{collection}.json`` and
  ``DELETE /api/v1/{collection}/{_id}`` write without ``srvModified``.

Everything is answered from the site's ``SiteChanges`` (see ``tasks.simulator.changes``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Final
from urllib.parse import parse_qsl

from tasks.simulator.changes import CHANGE_COLLECTIONS, SiteChanges
from tasks.simulator.generate import Document, SiteConfig

__all__ = ["Answer", "JwtIssuer", "V3Api"]

MIN_TIMESTAMP: Final = 946_684_800_000  # lib/api3/const.json
MAX_LIMIT: Final = 1000
_IMMUTABLE: Final = ("identifier", "date", "utcOffset", "eventType", "device", "app",
                     "srvCreated", "subject", "srvModified", "modifiedBy", "isValid")
_V1_WRITE: Final = re.compile(r"^/api/v1/(entries|treatments|devicestatus|profile)(?:\.json)?"
                              r"(?:/([^/]+))?$")
_V3_PATH: Final = re.compile(r"^/api/v3/([a-z]+)(?:/([^/]+))?(?:/([^/]+))?$")


@dataclass(frozen=True)
class Answer:
    """What the HTTP layer sends: status, JSON body, extra headers."""

    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


def _status(status: int, message: str | None = None) -> Answer:
    body: dict[str, Any] = {"status": status}
    if message:
        body["message"] = message
    return Answer(status, body)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class JwtIssuer:
    """HS256 JWTs carrying ``{accessToken, iat, exp}``, as Nightscout's enclave signs them."""

    key: bytes
    lifetime_s: float = 8 * 3600
    clock: Callable[[], float] = time.time

    def issue(self, access_token: str) -> dict[str, Any]:
        iat = int(self.clock())
        exp = int(iat + self.lifetime_s)
        claims = {"accessToken": access_token, "iat": iat, "exp": exp}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return {"token": f"{head}.{body}.{self._sign(head, body)}", "iat": iat, "exp": exp}

    def verify(self, token: str) -> str | None:
        """The access token inside a valid, unexpired JWT; None otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(parts[0], parts[1]), parts[2]):
            return None
        try:
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            return None
        if not isinstance(claims, dict) or float(claims.get("exp", 0)) <= self.clock():
            return None
        token_inside = claims.get("accessToken")
        return token_inside if isinstance(token_inside, str) else None

    def _sign(self, head: str, body: str) -> str:
        return _b64(hmac.new(self.key, f"{head}.{body}".encode(), hashlib.sha256).digest())


@dataclass
class V3Api:
    """API v3 of every simulated site, plus v1 writes.

    Args:
        changes: each site's change store, by site id.
        clock_ms: the server's clock.
        jwt: the issuer of the sites' JWTs.
        locate: a document of a site as the server now holds it, by ``_id`` or
            ``identifier`` (None: no such document).
        enabled: False answers every v3 and v2 call with 404, as a server without v3 does.
        denied: collections the token may not read through v3 (403).
    """

    changes: dict[str, SiteChanges]
    clock_ms: Callable[[], int]
    jwt: JwtIssuer
    locate: Callable[[SiteConfig, str, str], Document | None]
    enabled: bool = True
    denied: set[str] = field(default_factory=set)

    def handles(self, site_path: str, method: str) -> bool:
        """Whether this module answers ``method site_path`` (else v1's reads do)."""
        if site_path.startswith(("/api/v3/", "/api/v2/authorization/")):
            return True
        return method != "GET" and _V1_WRITE.match(site_path) is not None

    def answer(self, site: SiteConfig, method: str, site_path: str, query: str,
               headers: Any, body: bytes, v1_authorised: bool) -> Answer:
        """The answer to one request under this module."""
        if site_path.startswith("/api/v1/"):
            return self._v1_write(site, method, site_path, body, v1_authorised)
        if not self.enabled:
            return Answer(404, None)
        if site_path.startswith("/api/v2/authorization/request/") and method == "GET":
            return self._authorise(site, site_path.rsplit("/", 1)[1])
        if site_path == "/api/v3/version" and method == "GET":
            return Answer(200, {"status": 200, "result": {
                "version": "15.0.7", "apiVersion": "3.0.3-alpha", "srvDate": self.clock_ms(),
                "storage": {"storage": "mongodb", "version": "6.0.0"}}})
        if not self._bearer_ok(site, headers):
            return _status(401, "Missing or bad access token or JWT")
        match = _V3_PATH.match(site_path)
        if match is None or match.group(1) not in CHANGE_COLLECTIONS:
            return _status(404, "Bad operation or collection")
        collection, first, second = match.groups()
        if method == "GET" and first == "history":
            return self._history(site, collection, second, query, headers)
        return self._v3_write(site, method, collection, first, query, body)

    # -- auth

    def _authorise(self, site: SiteConfig, access_token: str) -> Answer:
        if site.token is None or not hmac.compare_digest(access_token, site.token):
            return Answer(401, {"status": 401, "message": "Unauthorized",
                                "description": "Invalid/Missing"})
        issued = self.jwt.issue(access_token)
        return Answer(200, {**issued, "sub": "cascade-reader",
                            "permissionGroups": [["*:*:read"]]})

    def _bearer_ok(self, site: SiteConfig, headers: Any) -> bool:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        inside = self.jwt.verify(token.strip())
        return inside is not None and site.token is not None and inside == site.token

    # -- history

    def _history(self, site: SiteConfig, collection: str, stamp: str | None, query: str,
                 headers: Any) -> Answer:
        if collection in self.denied:
            return _status(403, f"Missing permission api:{collection}:read")
        after = _history_after(stamp, headers.get("Last-Modified"))
        if after is None:
            return _status(400, "Bad or missing Last-Modified header/parameter")
        limit = _limit(dict(parse_qsl(query)).get("limit"))
        if limit is None:
            return _status(400, "Parameter limit out of tolerance")
        docs = self.changes[site.site_id].history(collection, after, limit)
        if not docs:
            return Answer(200, {"status": 200, "result": []})
        newest = max(int(d["srvModified"]) for d in docs)
        return Answer(200, {"status": 200, "result": docs},
                      (("Last-Modified", formatdate(newest / 1000, usegmt=True)),
                       ("ETag", f'W/"{newest}"')))

    # -- writes

    def _v3_write(self, site: SiteConfig, method: str, collection: str, key: str | None,
                  query: str, body: bytes) -> Answer:
        store = self.changes[site.site_id]
        if method == "POST" and key is None:
            doc = _json_object(body)
            if doc is None or not isinstance(doc.get("date"), int) or doc["date"] <= MIN_TIMESTAMP:
                return _status(400, "Bad or missing date field")
            stored = store.add(collection, doc, via="v3")
            return Answer(201, {"status": 201, "identifier": stored["identifier"],
                                "lastModified": stored["srvModified"]})
        if key is None or method not in ("PATCH", "DELETE"):
            return _status(404, "Bad operation or collection")
        current = self.locate(site, collection, key)
        if current is None:
            return _status(404)
        if method == "DELETE":
            if dict(parse_qsl(query)).get("permanent") == "true":
                store.delete_permanently(collection, current)
            else:
                store.soft_delete(collection, current)
            return _status(200)
        if current.get("isValid") is False:
            return _status(410)
        patch = _json_object(body)
        if not patch:
            return _status(400, "Bad or missing request body")
        for name in _IMMUTABLE:
            if name in patch and patch[name] != current.get(name):
                return _status(400, f"Field {name} cannot be modified by the client")
        store.edit(collection, current, patch, via="v3")
        return _status(200)

    def _v1_write(self, site: SiteConfig, method: str, site_path: str, body: bytes,
                  authorised: bool) -> Answer:
        if not authorised:
            return Answer(401, {"status": 401, "message": "Unauthorized",
                                "description": "Invalid/Missing"})
        match = _V1_WRITE.match(site_path)
        assert match is not None  # handles() checked it
        collection, key = match.groups()
        store = self.changes[site.site_id]
        if method == "POST" and key is None:
            parsed = _json_any(body)
            docs = parsed if isinstance(parsed, list) else [parsed]
            if not docs or not all(isinstance(d, dict) for d in docs):
                return _status(400, "Bad or missing request body")
            return Answer(200, [store.add(collection, d, via="v1") for d in docs])
        if method == "DELETE" and key is not None:
            current = self.locate(site, collection, key)
            if current is None:
                return _status(404)
            store.delete_permanently(collection, current)
            return Answer(200, {"n": 1, "ok": 1})
        return _status(404)


def _history_after(stamp: str | None, header: str | None) -> int | None:
    """The ``srvModified`` a history call lists changes after (None: a 400), as
    lib/api3/generic/history/operation.js and shared/dateTools.js read it."""
    if stamp is None:
        if not header:
            return None
        try:
            moment = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        return int(moment.timestamp()) * 1000 - 1  # floored to seconds, and >=, not >
    try:
        value = float(stamp)
    except ValueError:
        return None  # the server also reads ISO text; Cascade always sends ms
    if value < MIN_TIMESTAMP:
        value *= 1000  # moment.unix(): below 2000-01-01 in ms, the number is seconds
    return int(value) if value >= MIN_TIMESTAMP else None


def _limit(text: str | None) -> int | None:
    if text is None:
        return MAX_LIMIT
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value <= MAX_LIMIT else None


def _json_any(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None


def _json_object(body: bytes) -> Document | None:
    parsed = _json_any(body)
    return parsed if isinstance(parsed, dict) else None

