"""Branches and tags on Project Nessie (REST API v2), behind the ``BranchCatalog`` protocol.

A Nessie branch versions the whole Iceberg catalog, like an embedded ref does. PyIceberg
reaches a ref through Nessie's Iceberg REST endpoint with the ref in the path
(``<uri>/iceberg/<ref>``); Nessie refuses Iceberg's own ``branch=`` table refs for
anything but ``main``, so refs are always chosen by catalog.

Merges squash the branch into one commit on the target, atomically over every table.
Nessie's expected hash is not a strict compare-and-swap (it checks per table key), so
when the caller passes ``expected_hash`` the target's head is compared first. A 409 from
Nessie becomes the same ``BranchConflict`` the embedded profile raises.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog

from tasks.branches import MAIN, MergeResult, RefInfo, RefKind, TableChange, validate_ref_name
from tasks.errors import (
    BranchConflict,
    BranchError,
    BranchExists,
    BranchNotFound,
    ConfigError,
    ServiceUnavailable,
)
from tasks.faults import fault_point
from tasks.settings import StackSettings

__all__ = ["NessieBranchCatalog"]

logger = logging.getLogger("cascade.nessie")

_TIMEOUT: Final = httpx.Timeout(30.0, connect=5.0)
_READ_ATTEMPTS: Final = 4
# The merge commit names the tag its promote leaves, so a tag lost to a crash between the
# merge and the tag (two Nessie calls) is put back by the next merge: see ``_restore_tags``.
_PROMOTE_MESSAGE: Final = re.compile(r"^cascade: promote (?P<branch>\S+) into (?P<into>\S+); "
                                     r"tag (?P<tag>\S+)$")
# the hash of a branch with no commits yet (a fresh Nessie's main): nothing to merge from
NO_ANCESTOR: Final = "2e1cfa82b035c26cbbbdae632cea070514eb8b773f616aaeaf668e2f0be8f10d"


@dataclass(frozen=True)
class _Ref:
    name: str
    kind: RefKind
    hash: str

    @property
    def pinned(self) -> str:
        """``name@hash``: Nessie's path form for an operation expecting this head."""
        return f"{quote(self.name, safe='')}@{self.hash}"


class NessieBranchCatalog:
    """Branch operations over Nessie's REST API v2; catalogs over its Iceberg REST API."""

    def __init__(self, settings: StackSettings, client: httpx.Client | None = None) -> None:
        self.settings = settings
        headers = {"Accept": "application/json"}
        if settings.nessie_token is not None:
            headers["Authorization"] = f"Bearer {settings.nessie_token.get_secret_value()}"
        self._http = client or httpx.Client(base_url=settings.nessie_uri.rstrip("/") + "/api/v2",
                                            headers=headers, timeout=_TIMEOUT)
        self._catalogs: dict[str, RestCatalog] = {}

    # ---------------------------------------------------------------- catalogs

    def catalog(self, ref: str) -> Catalog:
        """The Iceberg catalog as of ``ref`` (a branch, a tag, or ``name@hash``)."""
        if ref not in self._catalogs:
            name = ref.split("@", 1)[0]
            self._get_ref(name)  # a clear BranchNotFound rather than an Iceberg 404
            properties = {
                "uri": f"{self.settings.nessie_uri.rstrip('/')}/iceberg/{quote(ref, safe='@')}",
                **self.settings.s3_properties,
            }
            if self.settings.nessie_token is not None:
                properties["token"] = self.settings.nessie_token.get_secret_value()
            self._catalogs[ref] = RestCatalog(ref, **properties)
        return self._catalogs[ref]

    @property
    def uri(self) -> str:
        """The Nessie server (no credentials)."""
        return self.settings.nessie_uri

    # ---------------------------------------------------------------- refs

    def create_branch(self, name: str, from_ref: str = MAIN) -> RefInfo:
        """Create branch ``name`` at the current head of ``from_ref``."""
        return self._create(name, "BRANCH", from_ref)

    def tag(self, name: str, ref: str = MAIN) -> RefInfo:
        """Tag the current head of ``ref`` as ``name``."""
        return self._create(name, "TAG", ref)

    def list_refs(self) -> list[RefInfo]:
        """All branches and tags, main first."""
        body = self._call("GET", "/trees", params={"max-records": 10_000})
        refs = [self._info(_parse_ref(r)) for r in body.get("references", [])]
        refs.sort(key=lambda r: (r.name != MAIN, r.name))
        return refs

    def ref(self, name: str) -> RefInfo:
        """One branch or tag with its head commit hash."""
        return self._info(self._get_ref(name))

    def delete_branch(self, name: str) -> None:
        """Delete branch or tag ``name`` (its files stay until Nessie's GC runs)."""
        if name == MAIN:
            raise BranchError("refusing to delete main")
        ref = self._get_ref(name)
        self._call("DELETE", f"/trees/{ref.pinned}", params={"type": ref.kind.upper()})
        self._catalogs = {k: v for k, v in self._catalogs.items()
                          if k.split("@", 1)[0] != name}

    def diff(self, ref: str, against: str = MAIN) -> list[TableChange]:
        """Tables whose content differs in ``ref`` compared with ``against``."""
        self._get_ref(ref)
        self._get_ref(against)
        changes: list[TableChange] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"max-records": 1000}
            if token:
                params["page-token"] = token
            body = self._call("GET", f"/trees/{quote(against, safe='@')}/diff/"
                                     f"{quote(ref, safe='@')}", params=params)
            for entry in body.get("diffs", []):
                change = _table_change(entry)
                if change is not None:
                    changes.append(change)
            token = body.get("token")
            if not body.get("hasMore") or not token:
                break
        return sorted(changes, key=lambda c: c.table)

    def history(self, ref: str = MAIN, limit: int = 50) -> list[dict[str, object]]:
        """Commits on ``ref``, newest first."""
        body = self._call("GET", f"/trees/{quote(ref, safe='@')}/history",
                          params={"max-records": limit})
        out = []
        for entry in body.get("logEntries", [])[:limit]:
            meta = entry.get("commitMeta", {})
            out.append({"hash": meta.get("hash"), "at": meta.get("commitTime"),
                        "message": meta.get("message"),
                        "parents": meta.get("parentCommitHashes", [])})
        return out

    # ---------------------------------------------------------------- merge / reset

    def merge(self, branch: str, into: str = MAIN, expected_hash: str | None = None,
              tag: str | None = None) -> MergeResult:
        """Squash ``branch`` into ``into`` as one commit; tag the result when asked.

        Raises:
            BranchConflict: ``into`` changed a table the branch changed (Nessie's 409), or
                moved at all when ``expected_hash`` is given. Nothing is merged.
        """
        target = self._get_ref(into)
        if target.kind != "branch":
            raise BranchError(f"cannot merge into tag {into!r}: tags never move")
        if tag is not None:
            validate_ref_name(tag)
            if self._exists(tag):
                raise BranchExists(f"{tag!r} already exists")
        if expected_hash is not None and expected_hash != target.hash:
            raise BranchConflict(
                f"{into} moved since it was checked (expected {expected_hash}, found "
                f"{target.hash}); nothing was merged: re-run validation on {branch!r}", []
            )
        self._restore_tags(into)
        source = self._get_ref(branch)
        tables = [c.table for c in self.diff(branch, into)]
        if target.hash == NO_ANCESTOR:
            return self._fast_forward(target, source, tables, tag)
        message = f"cascade: promote {branch} into {into}" + (f"; tag {tag}" if tag else "")
        body = {"fromRefName": branch, "fromHash": source.hash, "message": message}
        try:
            result = self._call("POST", f"/trees/{target.pinned}/history/merge", json=body)
        except _Conflict as conflict:
            keys = conflict.keys()
            raise BranchConflict(
                f"cannot merge {branch!r} into {into!r}: {into} changed since the branch "
                f"was created in {', '.join(keys) or 'the same tables'}; nothing was merged. "
                "Re-run the pipeline on a fresh branch (ingestion is idempotent).", keys,
            ) from None
        after = str(result.get("resultantTargetHash") or self._get_ref(into).hash)
        self._catalogs.pop(into, None)
        fault_point("promote-mid-merge")  # merged, not yet tagged: two calls, not one
        if tag is not None:
            self._create(tag, "TAG", f"{into}@{after}")
        return MergeResult(branch, into, tables, target.hash, after)

    def _restore_tags(self, branch: str, depth: int = 50) -> list[str]:
        """Tag promotes of ``branch`` whose tag is missing (a crash between merge and tag).

        Nessie merges and tags in two calls; the merge commit's message names its tag, so
        the next merge finds such a commit among the last ``depth`` and tags it where it
        was merged, as the interrupted promote would have.
        """
        wanted = {}
        for commit in self.history(branch, depth):
            found = _PROMOTE_MESSAGE.match(str(commit.get("message") or ""))
            if found and found["into"] == branch:
                wanted[found["tag"]] = str(commit["hash"])
        if not wanted:
            return []
        existing = {r.name for r in self.list_refs()}
        restored = []
        for name, commit_hash in wanted.items():
            if name in existing:
                continue
            try:
                self._create(name, "TAG", f"{branch}@{commit_hash}")
            except BranchExists:  # a concurrent promote restored it first
                continue
            logger.warning("restored tag %s on %s@%s: its promote stopped after merging",
                           name, branch, commit_hash[:12])
            restored.append(name)
        return restored

    def _fast_forward(self, target: _Ref, source: _Ref, tables: list[str],
                      tag: str | None) -> MergeResult:
        """The first promote into an empty branch: Nessie finds no common ancestor to merge
        from, so point the branch at the source instead, still only if it has not moved."""
        try:
            self._call("PUT", f"/trees/{target.pinned}", params={"type": "BRANCH"},
                       json={"type": source.kind.upper(), "name": source.name,
                             "hash": source.hash})
        except _Conflict:
            raise BranchConflict(
                f"{target.name} moved while {source.name!r} was promoted into it; nothing was "
                "merged: re-run the pipeline on a fresh branch", []) from None
        self._catalogs.pop(target.name, None)
        if tag is not None:
            self._create(tag, "TAG", f"{target.name}@{source.hash}")
        return MergeResult(source.name, target.name, tables, target.hash, source.hash)

    def reset(self, branch: str, to_ref: str) -> RefInfo:
        """Point ``branch`` at the head of ``to_ref`` (e.g. a tag, to undo a promote)."""
        ref = self._get_ref(branch)
        if ref.kind != "branch":
            raise BranchError(f"cannot reset tag {branch!r}: tags never move")
        target = self._get_ref(to_ref)
        self._call("PUT", f"/trees/{ref.pinned}", params={"type": "BRANCH"},
                   json={"type": target.kind.upper(), "name": target.name, "hash": target.hash})
        self._catalogs.pop(branch, None)
        return self.ref(branch)

    # ---------------------------------------------------------------- internals

    def _create(self, name: str, kind: str, from_ref: str) -> RefInfo:
        validate_ref_name(name)
        source = self._get_ref(from_ref)
        try:
            self._call("POST", "/trees", params={"name": name, "type": kind},
                       json={"type": source.kind.upper(), "name": source.name,
                             "hash": source.hash})
        except _Conflict:
            raise BranchExists(f"{name!r} already exists") from None
        return self.ref(name)

    def _exists(self, name: str) -> bool:
        try:
            self._get_ref(name)
        except BranchNotFound:
            return False
        return True

    def _get_ref(self, name: str) -> _Ref:
        plain, _, pinned_hash = name.partition("@")
        body = self._call("GET", f"/trees/{quote(plain, safe='')}", missing=name)
        ref = _parse_ref(body["reference"])
        return _Ref(ref.name, ref.kind, pinned_hash) if pinned_hash else ref

    def _info(self, ref: _Ref) -> RefInfo:
        return RefInfo(ref.name, ref.kind, ref.hash, "")

    def _call(self, method: str, path: str, *, missing: str | None = None,
              **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        if response.status_code == 404 and missing is not None:
            raise BranchNotFound(f"no branch or tag named {missing!r} in Nessie")
        if response.status_code in (401, 403):
            raise ConfigError(
                f"Nessie refused {method} {path} ({response.status_code}): check NESSIE_TOKEN "
                "or the nessie-catalog block's token"
            )
        if response.status_code == 409:
            raise _Conflict(_error_body(response))
        if response.status_code >= 400:
            detail = _error_body(response).get("message", response.text[:300])
            raise BranchError(f"Nessie {method} {path} failed ({response.status_code}): {detail}")
        if not response.content:
            return {}
        body: dict[str, Any] = response.json()
        return body


    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a read is tried again on a 5xx (Nessie answers 500 while its
        database connections recover, e.g. after Postgres restarted). Writes are never
        repeated: a merge that failed late may have landed."""
        attempts = _READ_ATTEMPTS if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                if attempt < attempts:
                    time.sleep(attempt)
                    continue
                raise ServiceUnavailable(
                    f"Nessie at {self.settings.nessie_uri} is unreachable "
                    f"({type(exc).__name__}): is the stack running? "
                    "(`python3 scripts/cascade.py stack status`)"
                ) from None
            if response.status_code < 500 or attempt == attempts:
                return response
            logger.warning("Nessie %s %s answered %d; trying again (%d of %d)", method, path,
                           response.status_code, attempt + 1, attempts)
            time.sleep(attempt)
        raise AssertionError("unreachable")  # the loop returns or raises


class _Conflict(Exception):
    """Nessie answered 409; carries the error body (per-key conflict details)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", "conflict"))
        self.body = body

    def keys(self) -> list[str]:
        """The conflicting table keys: from the error details, else from the message
        (Nessie 0.108 names them there: "... changed in conflict: 'raw.entries', ...")."""
        conflicts = (self.body.get("errorDetails") or {}).get("conflicts") or []
        keys = {".".join(c.get("key", {}).get("elements", [])) for c in conflicts}
        if not any(keys):
            message = str(self.body.get("message", ""))
            _, _, listed = message.partition("in conflict:")
            keys = set(re.findall(r"'([^']+)'", listed))
        return sorted(k for k in keys if k)


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text[:300]}
    return body if isinstance(body, dict) else {"message": str(body)[:300]}


def _parse_ref(raw: dict[str, Any]) -> _Ref:
    kind: RefKind = "tag" if str(raw.get("type", "")).upper() == "TAG" else "branch"
    return _Ref(str(raw["name"]), kind, str(raw.get("hash") or ""))


def _table_change(entry: dict[str, Any]) -> TableChange | None:
    """A diff entry as a TableChange, or None for anything that is not an Iceberg table."""
    before, after = entry.get("from"), entry.get("to")
    content = after or before or {}
    if content.get("type") != "ICEBERG_TABLE":
        return None
    table = ".".join(entry.get("key", {}).get("elements", []))
    kind = "added" if before is None else "removed" if after is None else "changed"
    return TableChange(table, kind,  # type: ignore[arg-type]
                       (before or {}).get("metadataLocation"),
                       (after or {}).get("metadataLocation"))
