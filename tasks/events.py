"""Cascade's own Prefect events: what BI refreshes and downstream deployments trigger on.

| event                   | resource                               | when                       |
| ----------------------- | -------------------------------------- | -------------------------- |
| ``cascade.main.promoted`` | ``cascade.lakehouse.main`` with label | a branch was merged into   |
|                         | ``cascade.promoted-by`` = ``promote``   | main and tagged            |
|                         | (a promote run of its own) or the chain |                            |
|                         | flow (``backfill``, ``daily``)          |                            |

The payload names the branch, the ``promoted-…`` tag, main's hash before and after, and the
tables that moved; the tag is also a related resource (``cascade.tag.<tag>``), and Prefect
adds the flow run, flow and deployment. An automation or a deployment trigger matches on the
event name and the resource (``prefect.yaml`` has one on ``cascade-publish``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prefect.events import emit_event

__all__ = ["MAIN_RESOURCE", "PROMOTED", "Promotion", "emit_promoted", "promoted_by"]

PROMOTED: Final = "cascade.main.promoted"
MAIN_RESOURCE: Final = "cascade.lakehouse.main"


@dataclass(frozen=True)
class Promotion:
    """What a promote did to main."""

    branch: str
    tag: str
    main_before: str
    main_after: str
    tables: tuple[str, ...]
    promoted_by: str  # "promote" when run on its own, else the chain flow's name


def emit_promoted(promotion: Promotion) -> str | None:
    """Send ``cascade.main.promoted``; its id, or None where no events are sent (no API)."""
    event = emit_event(
        event=PROMOTED,
        resource={"prefect.resource.id": MAIN_RESOURCE, "prefect.resource.name": "main",
                  "cascade.promoted-by": promotion.promoted_by},
        related=[{"prefect.resource.id": f"cascade.tag.{promotion.tag}",
                  "prefect.resource.role": "tag", "prefect.resource.name": promotion.tag}],
        payload={"branch": promotion.branch, "tag": promotion.tag,
                 "main_before": promotion.main_before, "main_after": promotion.main_after,
                 "tables": list(promotion.tables)},
    )
    return None if event is None else str(event.id)


def promoted_by() -> str:
    """``promote`` when the current flow run has no parent, else the parent flow's name."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    parent = flow_run.get_parent_flow_run_id()
    if parent is None:
        return "promote"
    with get_client(sync_client=True) as client:
        return client.read_flow(client.read_flow_run(UUID(str(parent))).flow_id).name
