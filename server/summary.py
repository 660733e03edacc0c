"""The summary of a list of effects: counts by status, and what the harness effects cost."""

from __future__ import annotations

from typing import Any

from effectd.models import EffectRecord


def summarize(records: list[EffectRecord]) -> dict[str, Any]:
    """Counts by status, and the cost and tokens over the harness effects among `records`."""
    counts: dict[str, int] = {}
    cost = 0.0
    tokens = {"input_tokens": 0, "output_tokens": 0}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
        result = record.result if isinstance(record.result, dict) else {}
        if record.kind == "harness":
            cost += float(result.get("cost_usd") or 0)
            usage = result.get("usage") or {}
            for name in tokens:
                value = usage.get(name)
                tokens[name] += int(value) if isinstance(value, int | float) else 0
    return {"count": len(records), "by_status": counts, "cost_usd": round(cost, 6), "tokens": tokens}
