"""Changes made to a simulated site after its documents were generated.

A simulated site's documents are a pure function of (site, day). ``SiteChanges`` is the
store laid over them: documents edited, soft-deleted (``isValid: false``), permanently
deleted or added late, each written the way Nightscout writes it:

* through API v3: the stored document gets ``srvModified`` (and ``identifier``,
  ``srvCreated`` when created), so ``GET /api/v3/{collection}/history/{ms}`` lists it;
* through API v1 (xDrip+, Loop, most bridges): no ``srvModified`` is stored, so v3's
  history never lists the document, and a permanent delete leaves no trace in it either.

Both APIs read the same store: v1's ``find`` sees the current documents (soft-deleted ones
included, marked ``isValid: false``), v3's history the documents modified after a time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Literal

from tasks.simulator.generate import Document

__all__ = ["CHANGE_COLLECTIONS", "SiteChanges", "Via", "identifier_of", "object_id"]

CHANGE_COLLECTIONS: Final = ("entries", "treatments", "devicestatus", "profile")
Via = Literal["v1", "v3"]

_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DAY_MS: Final = 86_400_000
# API v3's namespace for identifiers (lib/api3/shared/operationTools.js)
_NAMESPACE: Final = uuid.UUID(bytes=b"NightscoutRocks!")


def identifier_of(doc: Document) -> str:
    """The identifier API v3 calculates for a new document: a UUID v5 of
    ``<device>_<date>[_<eventType>]`` (JavaScript writes a missing device as ``undefined``)."""
    device = doc.get("device")
    key = f"{'undefined' if device is None else device}_{doc.get('date')}"
    if doc.get("eventType"):
        key += f"_{doc['eventType']}"
    return str(uuid.uuid5(_NAMESPACE, key))


def object_id(ms: int, serial: int) -> str:
    """A Mongo-ObjectId-shaped id: 8 hex of epoch seconds, then 16 hex (``c0ffee`` + serial)."""
    return f"{ms // 1000:08x}c0ffee{serial:010x}"


def _ms_of_iso(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # Nightscout reads text without an offset as UTC
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as Nightscout writes ``created_at``: ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def doc_ms(collection: str, doc: Document) -> int:
    """The time a collection is queried by: ``date`` for entries, ``mills`` (else
    ``created_at``) for profiles, ``created_at`` for the others."""
    if collection == "entries":
        return int(doc["date"])
    if collection == "profile" and isinstance(doc.get("mills"), int):
        return int(doc["mills"])
    return _ms_of_iso(str(doc["created_at"]))


def _ordinal(ms: int) -> int:
    return ms // _DAY_MS + _EPOCH_ORDINAL


@dataclass
class SiteChanges:
    """The changes of one simulated site, by collection; thread-safe.

    ``clock`` gives the server's time in epoch ms; ``srvModified`` never repeats or goes
    back, even when that clock stands still (a simulator with a fixed "now").
    """

    clock: Callable[[], int]
    _stored: dict[str, dict[str, Document]] = field(default_factory=dict)
    _removed: dict[str, set[str]] = field(default_factory=dict)
    _origin: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_modified: int = 0
    _serial: int = 0
    version: int = 0

    # -- what the APIs read

    def touched_days(self, collection: str) -> set[int]:
        """UTC day ordinals whose documents differ from the generated ones."""
        with self._lock:
            days = {day for (coll, _), day in self._origin.items() if coll == collection}
            days |= {_ordinal(doc_ms(collection, d)) for d in self._stored_in(collection)}
            return days

    def merge_day(self, collection: str, ordinal: int, generated: list[Document]) -> list[Document]:
        """The day's documents as the server now holds them (soft-deleted ones included)."""
        with self._lock:
            replaced = self._replaced(collection)
            kept = [d for d in generated if d["_id"] not in replaced]
            mine = [dict(d) for d in self._stored_in(collection)
                    if _ordinal(doc_ms(collection, d)) == ordinal]
        return kept + mine

    def merge_all(self, collection: str, generated: list[Document]) -> list[Document]:
        """Every document of a small collection (profiles) as the server now holds them."""
        with self._lock:
            replaced = self._replaced(collection)
            return [d for d in generated if d["_id"] not in replaced] + [
                dict(d) for d in self._stored_in(collection)]

    def history(self, collection: str, after_ms: int, limit: int) -> list[Document]:
        """API v3's history: documents with ``srvModified`` after ``after_ms``, oldest
        change first, at most ``limit``, as v3 renders them (``identifier``, no ``_id``)."""
        with self._lock:
            changed = [d for d in self._stored_in(collection)
                       if isinstance(d.get("srvModified"), int) and d["srvModified"] > after_ms]
        changed.sort(key=lambda d: int(d["srvModified"]))
        return [render_v3(d) for d in changed[:limit]]

    def last_modified(self, collection: str) -> int | None:
        """The newest ``srvModified`` of the collection (None when nothing went through v3)."""
        with self._lock:
            stamps = [int(d["srvModified"]) for d in self._stored_in(collection)
                      if isinstance(d.get("srvModified"), int)]
        return max(stamps, default=None)

    def _replaced(self, collection: str) -> set[str]:
        """Ids of generated documents the store overrides: changed, or deleted for good."""
        return set(self._stored.get(collection, {})) | self._removed.get(collection, set())

    def _stored_in(self, collection: str) -> list[Document]:
        return list(self._stored.get(collection, {}).values())

    # -- writes, as the server performs them

    def add(self, collection: str, doc: Document, via: Via, *, subject: str = "cascade-tests"
            ) -> Document:
        """Insert ``doc``; through v3 it gets ``identifier``, ``srvCreated`` and ``srvModified``
        (a document with the same identifier is replaced, as v3's de-duplication does)."""
        _check_collection(collection)
        stored = _normalised(collection, doc)
        with self._lock:
            self._serial += 1
            stored.setdefault("_id", object_id(self.clock(), self._serial))
            if via == "v3":
                stamp = self._next_stamp()
                stored.setdefault("identifier", identifier_of(stored))
                stored.update(srvCreated=stamp, srvModified=stamp, subject=subject)
                twin = self._find_identifier(collection, str(stored["identifier"]))
                if twin is not None:
                    stored["_id"] = twin
            self._put(collection, stored)
        return dict(stored)

    def edit(self, collection: str, current: Document, changes: dict[str, Any], via: Via
             ) -> Document:
        """Apply ``changes`` to ``current`` (a document as v1 returns it). Through v3 it is a
        PATCH: ``srvModified`` is set; through v1 a PUT that stores no ``srvModified``."""
        _check_collection(collection)
        stored = {**current, **changes}
        with self._lock:
            if via == "v3":
                stored["srvModified"] = self._next_stamp()
            self._remember_origin(collection, current)
            self._put(collection, stored)
        return dict(stored)

    def soft_delete(self, collection: str, current: Document) -> Document:
        """API v3's DELETE: ``isValid: false`` and a new ``srvModified``; v1 still returns it."""
        return self.edit(collection, current, {"isValid": False}, via="v3")

    def delete_permanently(self, collection: str, current: Document) -> None:
        """v1's DELETE or v3's ``?permanent=true``: gone, and history never says so."""
        _check_collection(collection)
        with self._lock:
            self._remember_origin(collection, current)
            self._stored.get(collection, {}).pop(str(current["_id"]), None)
            self._removed.setdefault(collection, set()).add(str(current["_id"]))
            self.version += 1

    def find(self, collection: str, key: str) -> Document | None:
        """A stored (changed or added) document by ``_id`` or ``identifier``."""
        with self._lock:
            for doc in self._stored_in(collection):
                if key in (doc.get("_id"), doc.get("identifier")):
                    return dict(doc)
        return None

    def _find_identifier(self, collection: str, identifier: str) -> str | None:
        for doc in self._stored_in(collection):
            if doc.get("identifier") == identifier:
                return str(doc["_id"])
        return None

    def _remember_origin(self, collection: str, current: Document) -> None:
        key = (collection, str(current["_id"]))
        if key not in self._origin and str(current["_id"]) not in self._stored.get(collection, {}):
            self._origin[key] = _ordinal(doc_ms(collection, current))

    def _put(self, collection: str, stored: Document) -> None:
        self._stored.setdefault(collection, {})[str(stored["_id"])] = stored
        self._removed.get(collection, set()).discard(str(stored["_id"]))
        self.version += 1

    def _next_stamp(self) -> int:
        self._last_modified = max(self.clock(), self._last_modified + 1)
        return self._last_modified


def render_v3(doc: Document) -> Document:
    """A stored document as API v3 answers it: ``identifier`` (the ``_id`` when it has
    none), no ``_id``, and ``srvCreated`` filled from ``srvModified`` when missing."""
    out = {k: v for k, v in doc.items() if k != "_id"}
    out.setdefault("identifier", str(doc["_id"]))
    if "srvModified" in out:
        out.setdefault("srvCreated", out["srvModified"])
    return out


def _check_collection(collection: str) -> None:
    if collection not in CHANGE_COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of "
                         f"{CHANGE_COLLECTIONS}")


def _normalised(collection: str, doc: Document) -> Document:
    """A copy of ``doc`` with the time fields the simulator's indexes need: ``date`` (ms)
    on entries, ``created_at`` as ``...mmmZ`` UTC text elsewhere (from ``date`` if absent),
    as API v3's create writes them."""
    out = dict(doc)
    if collection == "entries":
        if not isinstance(out.get("date"), int):
            raise ValueError("an entry needs 'date' in epoch milliseconds")
        return out
    if "created_at" not in out and isinstance(out.get("date"), int):
        out["created_at"] = iso_ms(int(out["date"]))
    if "created_at" not in out:
        raise ValueError(f"a {collection} document needs 'created_at' (or 'date' in ms)")
    out["created_at"] = iso_ms(_ms_of_iso(str(out["created_at"])))
    return out
