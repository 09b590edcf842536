"""Register Cascade's block types and create block documents from the environment.

``python -m flows register-blocks`` registers every block type Cascade uses, so the Prefect
UI offers them (the ``site`` parameter of ``backfill`` and ``daily`` is a ``nightscout-site``
block picker). On the embedded profile (``CASCADE_PROFILE`` unset or ``embedded``) it then
saves only the ``cascade-nightscout`` document, when ``NIGHTSCOUT_URL`` is set. On the stack
profile (with ``.cascade-stack/stack.env`` loaded, or the same variables set by hand) it
creates, or overwrites:

- ``cascade-nessie`` (nessie-catalog): NESSIE_URI, NESSIE_TOKEN
- ``cascade-trino`` (trino-connection): TRINO_HOST/_PORT/_USER/_CATALOG, TRINO_PASSWORD,
  TRINO_JWT
- ``cascade-minio`` (minio-credentials): MINIO_ROOT_USER/_PASSWORD, S3_ENDPOINT, S3_REGION
- ``cascade-lake`` (s3-bucket): LAKE_BUCKET + cascade-minio
- ``cascade-results`` (s3-bucket): LAKE_BUCKET/prefect-results + cascade-minio
- ``cascade-marts`` (sqlalchemy-connector): POSTGRES_HOST/_PORT/_USER/_PASSWORD,
  MARTS_DATABASE
- ``cascade-nightscout`` (nightscout-site): NIGHTSCOUT_URL, NIGHTSCOUT_API_SECRET/_TOKEN,
  NIGHTSCOUT_SITE_ID

It returns the ``CASCADE_*_BLOCK`` variables that make flows load these documents, and
``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, which puts flow results where every worker reads
them (the object store), whichever machine or pod a run lands on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import SecretStr

from blocks.nightscout import NightscoutSite
from blocks.stack import NessieCatalog, TrinoConnection
from tasks.errors import ConfigError

__all__ = ["RESULTS_FOLDER", "block_selectors", "register_blocks"]

RESULTS_FOLDER = "prefect-results"


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    return _opt(env, name) or default


def _need(env: Mapping[str, str], name: str) -> str:
    value = _opt(env, name)
    if value is None:
        raise ConfigError(f"{name} is not set: load .cascade-stack/stack.env "
                          "(`set -a; . .cascade-stack/stack.env; set +a`) or export it")
    return value


def _secret(env: Mapping[str, str], name: str) -> SecretStr | None:
    value = _opt(env, name)
    return SecretStr(value) if value else None


def _documents(env: Mapping[str, str], prefix: str) -> dict[str, tuple[str, Block]]:
    """(env var naming the document, block) per document name."""
    from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    minio = MinIOCredentials(
        minio_root_user=_need(env, "MINIO_ROOT_USER"),
        minio_root_password=SecretStr(_need(env, "MINIO_ROOT_PASSWORD")),
        region_name=_get(env, "S3_REGION", "us-east-1"),
        aws_client_parameters=AwsClientParameters(
            endpoint_url=_need(env, "S3_ENDPOINT"),
            config={"s3": {"addressing_style": "path"}},
        ),
    )
    docs: dict[str, tuple[str, Block]] = {
        f"{prefix}-nessie": ("CASCADE_NESSIE_BLOCK", NessieCatalog(
            uri=_need(env, "NESSIE_URI"), token=_secret(env, "NESSIE_TOKEN"))),
        f"{prefix}-trino": ("CASCADE_TRINO_BLOCK", TrinoConnection(
            host=_get(env, "TRINO_HOST", "127.0.0.1"), port=int(_get(env, "TRINO_PORT", "8080")),
            user=_get(env, "TRINO_USER", "cascade"), catalog=_get(env, "TRINO_CATALOG", "lake"),
            http_scheme=_get(env, "TRINO_HTTP_SCHEME", "http"),
            password=_secret(env, "TRINO_PASSWORD"), jwt=_secret(env, "TRINO_JWT"))),
        f"{prefix}-minio": ("", minio),
        f"{prefix}-lake": ("CASCADE_S3_BLOCK", S3Bucket(
            bucket_name=_get(env, "LAKE_BUCKET", "lake"), credentials=minio)),
        # Prefect's result storage for work-pool jobs, beside (never inside) the warehouse
        f"{prefix}-results": ("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", S3Bucket(
            bucket_name=_get(env, "LAKE_BUCKET", "lake"), bucket_folder=RESULTS_FOLDER,
            credentials=minio)),
        f"{prefix}-marts": ("CASCADE_MARTS_BLOCK", SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver=SyncDriver.POSTGRESQL_PSYCOPG2,
                username=_need(env, "POSTGRES_USER"),
                password=SecretStr(_need(env, "POSTGRES_PASSWORD")),
                host=_need(env, "POSTGRES_HOST"),
                port=int(_get(env, "POSTGRES_PORT", "5432")),
                database=_get(env, "MARTS_DATABASE", "marts"),
            ))),
    }
    return docs | _nightscout_document(env, prefix)


def _nightscout_document(env: Mapping[str, str], prefix: str) -> dict[str, tuple[str, Block]]:
    """The ``<prefix>-nightscout`` document when ``NIGHTSCOUT_URL`` names a site."""
    if not _opt(env, "NIGHTSCOUT_URL"):
        return {}
    return {f"{prefix}-nightscout": ("NIGHTSCOUT_BLOCK", NightscoutSite(
        url=_need(env, "NIGHTSCOUT_URL"), site_id=_get(env, "NIGHTSCOUT_SITE_ID", "default"),
        api_secret=_secret(env, "NIGHTSCOUT_API_SECRET"),
        token=_secret(env, "NIGHTSCOUT_TOKEN"), timezone=_opt(env, "CASCADE_TIMEZONE")))}


def _block_types() -> list[type[Block]]:
    """Every block type Cascade's flows and settings load."""
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
    from prefect_sqlalchemy import SqlAlchemyConnector

    return [NightscoutSite, NessieCatalog, TrinoConnection, MinIOCredentials, AwsCredentials,
            S3Bucket, SqlAlchemyConnector]


def _selectors(docs: dict[str, tuple[str, Block]]) -> dict[str, str]:
    """``{ENV_VAR: value}``: Cascade's variables take a document name, Prefect's own
    setting a ``<block type slug>/<name>``."""
    selectors: dict[str, str] = {}
    for name, (variable, document) in docs.items():
        if variable.startswith("PREFECT_"):
            selectors[variable] = f"{document.get_block_type_slug()}/{name}"
        elif variable:
            selectors[variable] = name
    return selectors


def block_selectors(env: Mapping[str, str], prefix: str = "cascade") -> dict[str, str]:
    """The variables ``register_blocks`` returns for ``env``, without saving anything."""
    return _selectors(_documents(env, prefix))


def register_blocks(env: Mapping[str, str] | None = None, prefix: str = "cascade",
                    profile: str | None = None) -> dict[str, str]:
    """Register every block type, save the profile's documents; return ``{ENV_VAR: value}``.

    Embedded: the types, and the Nightscout site when ``NIGHTSCOUT_URL`` is set. Stack: the
    types and every document of the module docstring's table.

    Args:
        env: where the documents' values come from (default the environment).
        prefix: document name prefix.
        profile: ``embedded`` or ``stack``; default the profile ``CASCADE_PROFILE`` selects.
    """
    from tasks.profile import profile_name

    env = os.environ if env is None else env
    docs = (_documents(env, prefix) if (profile or profile_name()) == "stack"
            else _nightscout_document(env, prefix))
    for block_type in _block_types():
        block_type.register_type_and_schema()
    for name, (_, document) in docs.items():
        document.save(name, overwrite=True)
    return _selectors(docs)
