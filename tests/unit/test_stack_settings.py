"""Stack-profile settings, blocks and Trino naming: no services needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks.register import _documents
from tasks.dbt_runner import trino_dbt_environment
from tasks.errors import ConfigError
from tasks.settings import StackSettings, load_stack_settings, marts_url_from_env
from tasks.trino import _catalog_properties, catalog_name

ENV = {
    "NESSIE_URI": "http://127.0.0.1:19120",
    "S3_ENDPOINT": "http://127.0.0.1:9000",
    "MINIO_ROOT_USER": "cascade",
    "MINIO_ROOT_PASSWORD": "minio-secret-1",
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_USER": "cascade",
    "POSTGRES_PASSWORD": "pg-secret-2",
    "TRINO_PASSWORD": "trino-secret-3",
    "TRINO_HTTP_SCHEME": "https",
}


@pytest.fixture
def stack_vars(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in ("CASCADE_NESSIE_BLOCK", "CASCADE_TRINO_BLOCK", "CASCADE_S3_BLOCK",
                "NESSIE_TOKEN", "TRINO_JWT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return ENV


def test_settings_from_env_keep_secrets_wrapped(stack_vars: dict[str, str]) -> None:
    settings = load_stack_settings()
    assert settings.s3_access_key == "cascade"
    assert settings.s3_secret_key.get_secret_value() == "minio-secret-1"
    assert "minio-secret-1" not in repr(settings) and "trino-secret-3" not in repr(settings)
    assert settings.s3_properties["s3.path-style-access"] == "true"


def test_missing_endpoint_says_how_to_fix(stack_vars: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NESSIE_URI")
    with pytest.raises(ConfigError, match=r"NESSIE_URI is not set.*stack up"):
        load_stack_settings()


def test_marts_url_comes_from_postgres_vars(stack_vars: dict[str, str]) -> None:
    url = marts_url_from_env()
    assert url == "postgresql+psycopg2://cascade:pg-secret-2@127.0.0.1:5432/marts"


def test_trino_catalog_names_are_sql_identifiers() -> None:
    assert catalog_name("run-backfill-20261122-ab12") == "lake_run_backfill_20261122_ab12"
    assert catalog_name("Promoted.X") == "lake_promoted_x"


def test_trino_catalog_properties_name_keys_not_values(stack_vars: dict[str, str]) -> None:
    props = _catalog_properties(load_stack_settings(), "run-x")
    assert props["iceberg.rest-catalog.prefix"] == "run-x"
    assert props["s3.aws-secret-key"] == "${ENV:MINIO_ROOT_PASSWORD}"
    assert "minio-secret-1" not in str(props)


def test_dbt_trino_target_follows_credentials(stack_vars: dict[str, str], tmp_path: Path) -> None:
    env = trino_dbt_environment(tmp_path, load_stack_settings(), "lake_run_x")
    assert env["DBT_TARGET"] == "trino_password"
    assert env["CASCADE_TRINO_CATALOG"] == "lake_run_x"
    plain = StackSettings("http://n", "http://s", "k", SecretStr("v"))
    assert trino_dbt_environment(tmp_path, plain, "c")["DBT_TARGET"] == "trino"


def test_register_documents_cover_every_service(stack_vars: dict[str, str]) -> None:
    docs = _documents(stack_vars, "cascade")
    assert {v for v, _ in docs.values() if v} == {
        "CASCADE_NESSIE_BLOCK", "CASCADE_TRINO_BLOCK", "CASCADE_S3_BLOCK", "CASCADE_MARTS_BLOCK",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"}
    shown = " ".join(repr(b) for _, b in docs.values())
    for secret in ("minio-secret-1", "pg-secret-2", "trino-secret-3"):
        assert secret not in shown
