"""A stack service stopped during a run: the run fails clearly, loses nothing and leaks no
secret; after a restart the same parameters succeed.

Each test stops one service with the stack script and starts it again however the test
ends, so later tests find the stack whole. This file sorts last among the stack tests on
purpose: stopping Postgres also takes the Prefect server's and Nessie's database away.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import pytest
import sqlalchemy as sa

from flows.build_branch import build_branch
from flows.ingest_day import ingest_day
from tasks.errors import ServiceUnavailable
from tasks.lakehouse import read_table
from tasks.profile import stack_lakehouse
from tasks.settings import marts_url_from_env
from tests._iceberg import eq
from tests.integration.conftest import REPO, SECRET

pytestmark = pytest.mark.stack

# what the error names when the service is down: MinIO behind the lakehouse, or Nessie itself
WHO = {"minio": "did not answer", "nessie": "Nessie at .* (is unreachable|did not answer)"}


@contextmanager
def stopped(service: str) -> Iterator[None]:
    """``service`` down for the block; up again (waiting for its health) afterwards. After
    Postgres, Nessie is restarted too, so later tests get a connection pool without the
    connections Postgres dropped."""
    _stack("down", service)
    try:
        yield
    finally:
        _stack("up", service)
        if service == "postgres":
            _stack("down", "nessie")
            _stack("up", "nessie")


def _stack(command: str, service: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "stack.py"), command,
                           "--only", service], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _no_secret(text: str, env: dict[str, str]) -> None:
    for key in ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"):
        if env.get(key):
            assert env[key] not in text, f"{key} leaked into an error"
    assert SECRET not in text


def _entries(branch: str, site: str, day: date) -> int:
    rows = read_table(stack_lakehouse().branches.catalog(branch), "raw.entries",
                      eq("site_id", site))
    return int((rows.get_column("entry_at").dt.date() == day).sum())


@pytest.mark.parametrize("service", ["minio", "nessie"])
def test_ingest_with_a_storage_service_down_fails_then_a_rerun_lands_the_day(
    service: str, stack_site: str, stack_env: dict[str, str],
) -> None:
    day = date(2024, 3, 26) if service == "minio" else date(2024, 3, 27)
    branches = stack_lakehouse().branches
    main_before = branches.ref("main").hash
    branch = f"fault-{service}-{stack_site}"
    branches.create_branch(branch)
    try:
        with stopped(service), pytest.raises(ServiceUnavailable, match=WHO[service]) as failure:
            ingest_day(day=day, branch=branch)
        message = str(failure.value)
        assert "stack status" in message  # says what to do
        _no_secret(message, stack_env)
        assert branches.ref("main").hash == main_before  # main never touched
        done = ingest_day(day=day, branch=branch)  # the same parameters, service back
        landed = _entries(branch, stack_site, day)
        assert landed == done.tables["entries"].committed > 200
        assert branches.ref("main").hash == main_before
    finally:
        branches.delete_branch(branch)


def test_build_with_trino_down_fails_clearly_then_builds(
    stack_site: str, stack_env: dict[str, str],
) -> None:
    branches = stack_lakehouse().branches
    main_before = branches.ref("main").hash
    branch = f"fault-trino-{stack_site}"
    branches.create_branch(branch)
    try:
        ingest_day(day=date(2024, 3, 28), branch=branch)
        with stopped("trino"), pytest.raises(ServiceUnavailable, match="Trino at ") as failure:
            build_branch(branch, node_tasks=False)
        message = str(failure.value)
        assert "nothing was promoted" in message
        _no_secret(message, stack_env)
        assert branches.ref("main").hash == main_before
        built = build_branch(branch, node_tasks=False)
        assert len(built.exported) >= 10
        assert read_table(branches.catalog(branch), "marts.mrt_daily_glycaemia",
                          eq("site_id", stack_site)).height >= 1
    finally:
        branches.delete_branch(branch)


def test_publish_with_postgres_down_fails_and_the_marts_stay_as_they_were(
    stack_site: str, stack_env: dict[str, str],
) -> None:
    from tasks.errors import PublishError
    from tasks.profile import current_profile
    from tasks.publish import publish_marts

    url = marts_url_from_env()
    assert url is not None

    def snapshot() -> list[tuple[object, ...]]:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return sorted(tuple(r) for r in conn.execute(sa.text(
                    "select table_name from information_schema.tables "
                    "where table_schema = current_schema() order by 1")))
        finally:
            engine.dispose()

    before = snapshot()
    frame = read_table(stack_lakehouse().branches.catalog("main"),
                       "marts.mrt_daily_glycaemia").head(5)
    connector = current_profile().marts_connector()
    with stopped("postgres"), pytest.raises(PublishError) as failure:
        publish_marts(connector, {"mrt_fault_probe": frame}, ref="main", ref_hash="x",
                      run_id="fault")
    message = str(failure.value)
    assert "127.0.0.1:5432/marts" in message and "previous content" in message, message
    _no_secret(message, stack_env)
    assert snapshot() == before  # nothing half-published: no probe table, nothing dropped
    report = publish_marts(connector, {"mrt_fault_probe": frame}, ref="main", ref_hash="x",
                           run_id="fault")
    assert report.marts == {"mrt_fault_probe": 5}
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("drop table mrt_fault_probe"))
    finally:
        engine.dispose()


def _pg(tool: str, env: dict[str, str], *args: str) -> None:
    """A Postgres client tool of the stack's major version, as docs/recover.md runs it."""
    import os
    import tomllib

    major = tomllib.loads((REPO / "scripts" / "stack" / "versions.toml").read_text())[
        "postgres"]["major"]
    done = subprocess.run(
        [f"/usr/lib/postgresql/{major}/bin/{tool}", "-h", env["POSTGRES_HOST"], "-p",
         env["POSTGRES_PORT"], "-U", env["POSTGRES_USER"], *args],
        env={**os.environ, "PGPASSWORD": env["POSTGRES_PASSWORD"]}, capture_output=True,
        text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_nessie_restored_from_its_pg_dump_reads_and_time_travels_as_backed_up(
    stack_site: str, stack_env: dict[str, str], tmp_path: object,
) -> None:
    """The backup of docs/recover.md: pg_dump of `nessie`, a later promote, then
    pg_restore with Nessie stopped: main, the tag and the data are as at the dump."""
    from pathlib import Path

    from flows.pipeline import backfill

    branches = stack_lakehouse().branches
    first = backfill(start=date(2024, 4, 5), end=date(2024, 4, 5), chunk_days=1,
                     dbt_node_tasks=False)
    tag, main_at_dump = str(first.tag), branches.ref("main").hash
    rows_at_dump = read_table(branches.catalog("main"), "raw.entries",
                              eq("site_id", stack_site)).height
    dump = Path(str(tmp_path)) / "nessie.dump"
    _pg("pg_dump", stack_env, "-Fc", "-f", str(dump), "nessie")

    second = backfill(start=date(2024, 4, 6), end=date(2024, 4, 6), chunk_days=1,
                      dbt_node_tasks=False)
    assert branches.ref("main").hash != main_at_dump

    with stopped("nessie"):
        _pg("pg_restore", stack_env, "--clean", "--if-exists", "-d", "nessie", str(dump))
    assert branches.ref("main").hash == main_at_dump
    assert branches.ref(tag).hash == main_at_dump
    assert str(second.tag) not in {r.name for r in branches.list_refs()}
    for ref in ("main", tag):  # the files are still in the bucket: both read the same rows
        entries = read_table(branches.catalog(ref), "raw.entries", eq("site_id", stack_site))
        assert entries.height == rows_at_dump > 200
