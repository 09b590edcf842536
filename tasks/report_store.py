"""Where reports live: the lakehouse's own storage, so any flow run (any pod) can write one
and any user can open it.

* embedded: ``$CASCADE_HOME/reports/`` beside the warehouse (not inside it: ``maintain``
  deletes files under ``warehouse/`` that no table references), opened as ``file://``.
* stack: ``s3://<lake bucket>/reports/`` on the object store (MinIO), opened through a
  presigned GET link valid for ``LINK_DAYS`` days (the longest S3 signatures allow). The
  link carries the access key id and a signature, never the secret key; the report's
  content is also in the site's Prefect artifact, which does not expire.

Each site gets ``reports/<site>/<end date>/report.html`` (one per report period end) and
``reports/<site>/latest.html``, overwritten by every publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tasks.profile import EmbeddedLakehouse, Lakehouse, StackLakehouse
from tasks.settings import StackSettings

__all__ = ["LINK_DAYS", "ReportStore", "StoredFile", "report_store_for"]

LINK_DAYS: Final = 7


@dataclass(frozen=True)
class StoredFile:
    """A file in the report store: where it is, and a link a user can open."""

    location: str  # file:///… or s3://bucket/key
    url: str  # what a browser opens


class ReportStore(Protocol):
    """Writes report files where every flow run and every user can reach them."""

    def put(self, key: str, data: bytes, content_type: str) -> StoredFile: ...


@dataclass(frozen=True)
class LocalReportStore:
    """Reports under a directory of the embedded lakehouse."""

    root: Path

    def put(self, key: str, data: bytes, content_type: str) -> StoredFile:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)  # a reader never sees half a report
        uri = path.resolve().as_uri()
        return StoredFile(location=uri, url=uri)


@dataclass(frozen=True)
class S3ReportStore:
    """Reports under ``reports/`` of the lake bucket on the stack's object store."""

    settings: StackSettings
    prefix: str = "reports"

    def _filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key=self.settings.s3_access_key,
            secret=self.settings.s3_secret_key.get_secret_value(),
            endpoint_url=self.settings.s3_endpoint,
            client_kwargs={"region_name": self.settings.s3_region},
            config_kwargs={"s3": {"addressing_style": "path"}},
        )

    def put(self, key: str, data: bytes, content_type: str) -> StoredFile:
        fs = self._filesystem()
        path = f"{self.settings.bucket}/{self.prefix}/{key}"
        fs.pipe_file(path, data, ContentType=content_type)
        url = fs.url(path, expires=LINK_DAYS * 86_400)
        return StoredFile(location=f"s3://{path}", url=str(url))


def report_store_for(lake: Lakehouse) -> ReportStore:
    """The report store of ``lake``'s profile."""
    if isinstance(lake, StackLakehouse):
        return S3ReportStore(lake.settings)
    if isinstance(lake, EmbeddedLakehouse):
        return LocalReportStore(lake.settings.home / "reports")
    raise TypeError(f"no report store for a {type(lake).__name__}")
