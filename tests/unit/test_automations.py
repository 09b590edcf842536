"""The automations' definitions and the deployments in prefect.yaml, without a server."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.server.events.actions import SendNotification as ServerSendNotification
from prefect.server.events.schemas.events import RelatedResource, Resource

from flows.__main__ import _parser
from flows.automations import FAILED_NAME, STALE_NAME, build_automations

REPO = Path(__file__).resolve().parents[2]


def _by_name() -> dict[str, AutomationCore]:
    return {a.name: a for a in build_automations(uuid4())}


def test_failure_automation_matches_failed_and_crashed_cascade_runs_one_by_one() -> None:
    failed = _by_name()[FAILED_NAME]
    trigger = failed.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Reactive
    assert trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.match_related.model_dump() == {  # type: ignore[union-attr]
        "prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.cascade"}


def test_freshness_automation_expects_a_completed_daily_within_26_hours() -> None:
    stale = _by_name()[STALE_NAME]
    trigger = stale.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.within == timedelta(hours=26)
    related = [r.model_dump() for r in trigger.match_related]  # type: ignore[union-attr]
    assert {"prefect.resource.role": "deployment",
            "prefect.resource.name": "cascade-daily"} in related
    # the trigger's related-resource filter accepts a daily completion, not a backfill one
    run = Resource({"prefect.resource.id": f"prefect.flow-run.{uuid4()}"})

    def related_to(deployment: str) -> list[RelatedResource]:
        return [RelatedResource({"prefect.resource.id": f"prefect.deployment.{uuid4()}",
                                 "prefect.resource.role": "deployment",
                                 "prefect.resource.name": deployment}),
                RelatedResource({"prefect.resource.id": "prefect.tag.cascade",
                                 "prefect.resource.role": "tag"})]

    from prefect.server.events.schemas.automations import EventTrigger as ServerTrigger

    server = ServerTrigger.model_validate(trigger.model_dump())
    assert server.covers_resources(run, related_to("cascade-daily"))
    assert not server.covers_resources(run, related_to("cascade-backfill"))


@pytest.mark.parametrize("name", [FAILED_NAME, STALE_NAME])
def test_notification_templates_are_valid_for_the_server(name: str) -> None:
    automation = _by_name()[name]
    (action,) = automation.actions
    assert isinstance(action, SendNotification)
    ServerSendNotification.model_validate(action.model_dump())  # the server's own checks
    if name == FAILED_NAME:
        for needle in ("flow.name", "flow_run.name", "flow_run.parameters", "ui_url"):
            assert needle in action.body


def test_cli_has_apply_automations_with_a_default_block() -> None:
    args = _parser().parse_args(["apply-automations"])
    assert args.webhook_block == "cascade-alerts"
    args = _parser().parse_args(["apply-automations", "--webhook-block", "slack-webhook/ops"])
    assert args.webhook_block == "slack-webhook/ops"


def test_prefect_yaml_has_every_flow_tagged_and_a_bound_daily() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {f"cascade-{n}" for n in (
        "ingest-day", "ingest-window", "build-branch", "validate", "promote", "publish",
        "maintain", "backfill", "daily", "reconcile")}
    for deployment in deployments.values():
        assert "cascade" in deployment["tags"]  # what the failure automation matches
        assert (REPO / deployment["entrypoint"].split(":")[0]).exists()
    daily = deployments["cascade-daily"]
    assert daily["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert daily["schedules"][0]["cron"] == "0 2 * * *"
    assert daily["schedules"][0]["timezone"] == "Europe/London"


def test_zombie_automation_crashes_a_run_whose_heartbeats_stop() -> None:
    from prefect.automations import ChangeFlowRunState
    from prefect.client.schemas.objects import StateType
    from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation

    from flows.automations import HEARTBEAT_S, ZOMBIE_AFTER, ZOMBIE_NAME

    zombie = _by_name()[ZOMBIE_NAME]
    trigger = zombie.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Crashed"} <= trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.within == ZOMBIE_AFTER >= timedelta(seconds=3 * HEARTBEAT_S)
    (action,) = zombie.actions
    assert isinstance(action, ChangeFlowRunState) and action.state == StateType.CRASHED
    ServerAutomation.model_validate(zombie.model_dump())  # the server's own checks
