"""How a run's failure reads: each reason once, after the partitions it stopped."""

from __future__ import annotations

from tasks.fanout import _summarise


def test_partitions_failing_for_one_reason_read_as_one_sentence() -> None:
    reason = "Nightscout at https://ns.example kept failing for /api/v1/entries.json (HTTP 503)"
    labels = [f"2024-0{m}-01..2024-0{m + 1}-01 site=a" for m in range(1, 6)]
    text = _summarise([(label, reason) for label in labels])
    assert text == (f"{labels[0]}, {labels[1]}, {labels[2]} and 2 more: {reason}")


def test_distinct_reasons_are_each_named_once() -> None:
    text = _summarise([("p1", "source down"), ("p2", "contract broken"), ("p3", "source down")])
    assert text == "p1, p3: source down | p2: contract broken"
