"""Prefect blocks of the stack profile: Nessie, Trino, and loading them as settings.

MinIO and Postgres use the integrations' own blocks (prefect-aws ``MinIOCredentials`` /
``S3Bucket``, prefect-sqlalchemy ``SqlAlchemyConnector``); Nessie and Trino have none, so
they are defined here. Every secret is a ``SecretStr``: it shows as ``**********`` in the
UI, in logs and in ``repr``.
"""

from __future__ import annotations

from typing import Any, cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

__all__ = ["NessieCatalog", "TrinoConnection", "load_stack_blocks"]


class NessieCatalog(Block):
    """A Project Nessie server: branches over the Iceberg catalog of the lakehouse."""

    _block_type_name = "Nessie Catalog"
    _block_type_slug = "nessie-catalog"
    _description = "Nessie server (REST API v2 and Iceberg REST) holding Cascade's branches."

    uri: str = Field(description="Base URL, e.g. http://127.0.0.1:19120 (no /api suffix).")
    default_branch: str = Field(default="main", description="The branch promotes merge into.")
    token: SecretStr | None = Field(
        default=None, description="Bearer token when Nessie requires authentication."
    )


class TrinoConnection(Block):
    """A Trino coordinator with an Iceberg catalog on Nessie's ``main``."""

    _block_type_name = "Trino Connection"
    _block_type_slug = "trino-connection"
    _description = "Trino coordinator that dbt-trino builds Cascade's models on."

    host: str = Field(default="127.0.0.1", description="Coordinator host.")
    port: int = Field(default=8080, description="Coordinator HTTP(S) port.")
    user: str = Field(default="cascade", description="Trino user the queries run as.")
    catalog: str = Field(default="lake", description="Iceberg catalog that reads main.")
    http_scheme: str = Field(default="http", pattern=r"^https?$",
                             description="https whenever a password or JWT is used.")
    password: SecretStr | None = Field(default=None,
                                       description="Password (basic auth over https).")
    jwt: SecretStr | None = Field(default=None, description="JWT bearer token (over https).")
    verify: bool = Field(default=True, description="Verify the server's TLS certificate.")


def load_stack_blocks(nessie: str | None, trino: str | None,
                      s3: str | None) -> dict[str, object]:
    """Settings values from the named blocks (only the ones named); see StackSettings."""
    values: dict[str, object] = {}
    if nessie:
        block = cast(NessieCatalog, NessieCatalog.load(nessie))
        values.update(nessie_uri=block.uri, nessie_token=block.token)
    if trino:
        tb = cast(TrinoConnection, TrinoConnection.load(trino))
        values.update(trino_host=tb.host, trino_port=tb.port, trino_user=tb.user,
                      trino_catalog=tb.catalog, trino_http_scheme=tb.http_scheme,
                      trino_password=tb.password, trino_jwt=tb.jwt, trino_verify=tb.verify)
    if s3:
        values.update(_s3_values(s3))
    return values


def _s3_values(name: str) -> dict[str, object]:
    """Bucket, endpoint and keys from an ``S3Bucket`` block with ``MinIOCredentials``."""
    from prefect_aws import S3Bucket

    bucket = cast(S3Bucket, S3Bucket.load(name))
    credentials: Any = bucket.credentials
    params = credentials.aws_client_parameters
    endpoint = getattr(params, "endpoint_url", None)
    return {
        "bucket": bucket.bucket_name,
        "s3_endpoint": str(endpoint) if endpoint else None,
        "s3_region": getattr(credentials, "region_name", None) or "us-east-1",
        "s3_access_key": getattr(credentials, "minio_root_user", None)
        or getattr(credentials, "aws_access_key_id", None),
        "s3_secret_key": getattr(credentials, "minio_root_password", None)
        or getattr(credentials, "aws_secret_access_key", None),
    }
