"""Cascade's Prefect automations, declared here and applied with
``python -m flows apply-automations``.

Two automations, both sending through one notification block (any Prefect notification
block: Slack, Microsoft Teams, email, ...; by default a ``Custom Webhook`` block named
``cascade-alerts`` that the command creates from ``CASCADE_ALERT_WEBHOOK_URL``):

* ``cascade-flow-run-failed``: any flow run tagged ``cascade`` (every deployment in
  ``prefect.yaml``) entering Failed or Crashed; the message names the flow, the run, its
  parameters (the branch kept for inspection is among them or in the state message) and
  links to the run in the UI.
* ``cascade-daily-stale``: the ``cascade-daily`` deployment has not completed a run for
  26 hours (a proactive trigger: it fires on the *absence* of ``prefect.flow-run.Completed``).

And one that sends nothing: ``cascade-zombie-runs`` marks a flow run Crashed when its
heartbeats stop (a process killed hard, out of memory, a node lost) for ``ZOMBIE_AFTER``,
so no run stays Running for ever; the Crashed state then reaches ``cascade-flow-run-failed``.
Every flow run sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
(Prefect's default, ``HEARTBEAT_S``, is what ``ZOMBIE_AFTER`` allows three times over; a run
set to beat more slowly needs a longer ``after``).

``apply_automations`` updates an automation of the same name in place, or creates it, so
applying twice leaves exactly one of each.

A plain ``Webhook`` block is not a notification block (it has no ``notify``), which
``SendNotification`` needs: the default is therefore Prefect's ``CustomWebhookNotificationBlock``,
which posts ``{"subject": ..., "body": ..., "flow_run": ...}`` as JSON.
"""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import UUID

from prefect.automations import (
    AutomationCore,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    ResourceSpecification,
    SendNotification,
)
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.schemas.objects import StateType

from tasks.errors import ConfigError

__all__ = [
    "DEFAULT_ALERT_BLOCK",
    "FAILED_NAME",
    "HEARTBEAT_S",
    "STALE_NAME",
    "ZOMBIE_AFTER",
    "ZOMBIE_NAME",
    "apply_automations",
    "apply_zombie_detection",
    "build_automations",
    "build_zombie_detection",
    "delete_automations",
    "ensure_webhook_block",
]

DEFAULT_ALERT_BLOCK = "cascade-alerts"
FAILED_NAME = "cascade-flow-run-failed"
STALE_NAME = "cascade-daily-stale"
TAG = "cascade"
DAILY_DEPLOYMENT = "cascade-daily"
STALE_AFTER = timedelta(hours=26)
ZOMBIE_NAME = "cascade-zombie-runs"
HEARTBEAT_S = 180  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY's default (its minimum is 30)
ZOMBIE_AFTER = timedelta(seconds=3 * HEARTBEAT_S + 60)  # three heartbeats missed, and a margin
ZOMBIE_MESSAGE = ("No heartbeat from this flow run for {seconds} s: its process was killed or "
                  "its machine lost (marked Crashed by the cascade-zombie-runs automation). "
                  "Nothing was promoted; re-run it with the same parameters.")

FAILED_SUBJECT = "Cascade: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = """\
Cascade flow {{ flow.name }}, run {{ flow_run.name }} ({{ flow_run.id }}), \
ended {{ flow_run.state.name }}.
Deployment: {{ deployment.name if deployment else "none (run outside a deployment)" }}
Parameters: {{ flow_run.parameters | tojson }}
Message: {{ flow_run.state.message }}
Nothing was promoted by a failed run; a run branch named in the parameters or the message \
is kept for inspection.
Run: {{ (flow_run | ui_url) or ("/runs/flow-run/" ~ flow_run.id ~ " on the Prefect UI (set \
PREFECT_UI_URL on the server for a full link)") }}"""

STALE_SUBJECT = "Cascade: daily has not completed for 26 hours"
STALE_BODY = """\
No run of the cascade-daily deployment has completed in the last 26 hours, so main and \
the marts are stale. Check the deployment's runs, its schedule and the work pool's workers.
Automation: {{ automation.name }} ({{ (automation | ui_url) or automation.id }})"""


def build_automations(block_document_id: UUID) -> list[AutomationCore]:
    """The automations, each sending through the notification block document given."""
    failed = AutomationCore(
        name=FAILED_NAME,
        description="Notify when any Cascade flow run (tag cascade) ends Failed or Crashed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{TAG}",
            }),
            for_each={"prefect.resource.id"},  # one notification per flow run
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id,
                                  subject=FAILED_SUBJECT, body=FAILED_BODY)],
    )
    stale = AutomationCore(
        name=STALE_NAME,
        description="Notify when the cascade-daily deployment has not completed for 26 hours.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=[
                ResourceSpecification({"prefect.resource.role": "deployment",
                                       "prefect.resource.name": DAILY_DEPLOYMENT}),
                ResourceSpecification({"prefect.resource.role": "tag",
                                       "prefect.resource.id": f"prefect.tag.{TAG}"}),
            ],
            posture=Posture.Proactive,
            threshold=1,
            within=STALE_AFTER,
        ),
        actions=[SendNotification(block_document_id=block_document_id,
                                  subject=STALE_SUBJECT, body=STALE_BODY)],
    )
    return [failed, stale, build_zombie_detection()]


def build_zombie_detection(after: timedelta = ZOMBIE_AFTER) -> AutomationCore:
    """Mark a flow run Crashed when no heartbeat (and no end) came from it for ``after``."""
    return AutomationCore(
        name=ZOMBIE_NAME,
        description="Mark a flow run Crashed when its heartbeats stop (a killed process).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=after,
        ),
        actions=[ChangeFlowRunState(
            name=None, state=StateType.CRASHED, force=False,
            message=ZOMBIE_MESSAGE.format(seconds=int(after.total_seconds())))],
    )


def ensure_webhook_block(name: str = DEFAULT_ALERT_BLOCK, url: str | None = None) -> UUID:
    """The id of notification block document ``name``; created as a Custom Webhook if missing.

    ``name`` is a Custom Webhook document's name, or ``<block-type-slug>/<name>`` for any
    other notification block (``slack-webhook/ops``). ``url`` (default
    ``CASCADE_ALERT_WEBHOOK_URL``) is needed only to create a missing Custom Webhook.
    """
    slug = name if "/" in name else f"custom-webhook/{name}"
    try:
        block: Block | None = Block.load(slug)  # type: ignore[assignment]  # sync call
    except ValueError:
        block = None
    if block is not None:
        if "notify" not in block.get_block_capabilities():
            raise ConfigError(f"block {slug!r} is not a notification block (no notify)")
        block_id: UUID | None = block._block_document_id
        assert block_id is not None
        return block_id
    url = url or os.environ.get("CASCADE_ALERT_WEBHOOK_URL", "").strip() or None
    if url is None or "/" in name:
        raise ConfigError(f"notification block {slug!r} does not exist: set "
                          "CASCADE_ALERT_WEBHOOK_URL to create it as a webhook, or pass "
                          "--webhook-block with an existing notification block's name")
    webhook = CustomWebhookNotificationBlock(  # type: ignore[call-arg]  # defaults
        name=name, url=url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "{{name}}"},
    )
    saved: UUID = webhook.save(name, overwrite=True)  # type: ignore[assignment]  # sync call
    return saved


def apply_automations(block_name: str = DEFAULT_ALERT_BLOCK,
                      webhook_url: str | None = None) -> dict[str, UUID]:
    """Create or update (by name) every Cascade automation; their ids by name."""

    block_id = ensure_webhook_block(block_name, webhook_url)
    return {a.name: _upsert(a) for a in build_automations(block_id)}


def apply_zombie_detection(after: timedelta = ZOMBIE_AFTER) -> UUID:
    """Create or update (by name) only the zombie-run automation; it needs no notification
    block. Its id."""
    return _upsert(build_zombie_detection(after))


def _upsert(automation: AutomationCore) -> UUID:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(automation.name)
        if not existing:
            created: UUID = client.create_automation(automation)
            return created
        keep, *extra = existing
        for duplicate in extra:  # e.g. left by `prefect automation create`
            client.delete_automation(duplicate.id)
        client.update_automation(keep.id, automation)
        return keep.id


def delete_automations() -> int:
    """Delete every Cascade automation (by name); how many were deleted."""
    from prefect.client.orchestration import get_client

    deleted = 0
    with get_client(sync_client=True) as client:
        for name in (FAILED_NAME, STALE_NAME, ZOMBIE_NAME):
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)
                deleted += 1
    return deleted
