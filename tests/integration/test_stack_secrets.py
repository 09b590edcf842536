"""No secret leaks from a full run on the stack: not in logs, artifacts, parameters or errors."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.pipeline import backfill
from tasks.errors import NightscoutAuthError

from .conftest import REPO, SECRET

pytestmark = pytest.mark.stack


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_a_full_run_leaks_no_secret(stack_site: str, stack_env: dict[str, str],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "nightscout api secret": SECRET,
        "nightscout api secret (sha1, as sent)": hashlib.sha1(SECRET.encode()).hexdigest(),
        "minio password": stack_env["MINIO_ROOT_PASSWORD"],
        "postgres password": stack_env["POSTGRES_PASSWORD"],
        "marts reader password": stack_env["MARTS_READER_PASSWORD"],
    }
    started = datetime.now(UTC)
    backfill(start=date(2024, 3, 26), end=date(2024, 3, 26), dbt_node_tasks=False)
    # a run that fails on the source's authentication: its error must not carry the secret
    monkeypatch.setenv("NIGHTSCOUT_API_SECRET", "wrong-" + SECRET)
    secrets["the wrong secret tried"] = "wrong-" + SECRET
    with pytest.raises(NightscoutAuthError) as failure:
        backfill(start=date(2024, 3, 27), end=date(2024, 3, 27), dbt_node_tasks=False)
    haystacks: dict[str, str] = {"the auth error": str(failure.value) + repr(failure.value)}

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime.model_validate({"after_": started})))
        ids = [r.id for r in runs]
        assert len(ids) >= 6  # backfill + build, validate, promote, publish; the failed one
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    assert logs and artifacts
    haystacks["flow run parameters and states"] = " ".join(
        f"{r.name} {r.parameters} {r.state.message if r.state else ''}" for r in runs)
    haystacks["run logs"] = "\n".join(entry.message for entry in logs)
    haystacks["artifacts"] = "\n".join(f"{a.key} {a.description} {a.data}" for a in artifacts)
    for path in _files(tmp_path, REPO / ".cascade-stack" / "logs"):
        haystacks[str(path)] = path.read_text(errors="replace")

    leaks = [f"{what} in {where}" for where, text in haystacks.items()
             for what, secret in secrets.items() if secret in text]
    assert leaks == []
