"""Block documents on the stack's Prefect server: registered from stack.env, loaded by flows."""

from __future__ import annotations

import pytest
from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import text

from blocks.register import register_blocks
from tasks.profile import current_profile
from tasks.settings import load_stack_settings

pytestmark = pytest.mark.stack


def test_registered_blocks_drive_the_stack(stack_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    selectors = register_blocks(prefix="cascade-test")
    assert selectors == {"CASCADE_NESSIE_BLOCK": "cascade-test-nessie",
                         "CASCADE_TRINO_BLOCK": "cascade-test-trino",
                         "CASCADE_S3_BLOCK": "cascade-test-lake",
                         "CASCADE_MARTS_BLOCK": "cascade-test-marts",
                         "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "s3-bucket/cascade-test-results"}
    # the flows' own settings come from the blocks once the variables name them, even
    # with the plain variables gone
    for name in ("NESSIE_URI", "S3_ENDPOINT", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        monkeypatch.delenv(name)
    for variable, document in selectors.items():
        if variable.startswith("CASCADE_"):
            monkeypatch.setenv(variable, document)
    settings = load_stack_settings()
    assert settings.nessie_uri == stack_env["NESSIE_URI"]
    assert settings.s3_endpoint.rstrip("/") == stack_env["S3_ENDPOINT"].rstrip("/")
    assert settings.s3_access_key == stack_env["MINIO_ROOT_USER"]
    assert settings.s3_secret_key.get_secret_value() == stack_env["MINIO_ROOT_PASSWORD"]
    assert settings.trino_catalog == stack_env["TRINO_CATALOG"]
    connector = current_profile().marts_connector()
    assert isinstance(connector, SqlAlchemyConnector)
    with connector.get_connection(begin=False) as conn:
        assert conn.execute(text("select current_database()")).scalar() == "marts"
    # secrets stay masked in what the server returns for display
    shown = repr(SqlAlchemyConnector.load("cascade-test-marts"))
    assert stack_env["POSTGRES_PASSWORD"] not in shown
