"""The demo's flow section for agent work: a plan step lists files, one sub-agent per file (`for_each`),
a review of them all, deliberately failing; then the same flow resumed (`resume`), which runs only the
review again and takes every other step from the first run."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client

from effectd.demo.kit import HARNESS, DemoFailed, Pace, Screen, call
from effectd.model.records import parse_iso

FILES = ["config.py", "journal.py", "runner.py", "flows.py"]


def agent_steps(pace: Pace, review_fails: bool) -> list[dict[str, Any]]:
    """plan -> document (one sub-agent per file the plan lists) -> review."""
    quick = ["--steps", "1", "--delay", str(pace.agent_delay_s[0])]
    return [
        {
            "id": "plan",
            "harness": HARNESS,
            "prompt": "list the modules that need docs, as a JSON list",
            "args": [*quick, "--answer", json.dumps(FILES)],
        },
        {
            "id": "document",
            "needs": ["plan"],
            "for_each": "{{steps.plan.result.answer}}",  # the plan's answer: a JSON list of files
            "harness": HARNESS,
            "prompt": "document {{item}} (file {{index}} of the plan)",
            "args": ["--steps", "2", "--delay", str(pace.agent_delay_s[1])],
        },
        {
            "id": "review",
            "needs": ["document"],
            "harness": HARNESS,
            "prompt": "review the docs written for {{steps.plan.result.answer}}",
            "args": [*quick, *(["--fail"] if review_fails else [])],
        },
    ]


def _line(step: dict[str, Any], screen: Screen) -> str:
    how = "cached (taken from the first run)" if step.get("cached") else f"{step.get('duration_s') or 0:.2f} s"
    children = step.get("children") or []
    fanned = ""
    if children:  # the step itself runs no process: its time is its children's, side by side
        starts = [parse_iso(c["started_at"]) for c in children if c.get("started_at")]
        ends = [parse_iso(c["finished_at"]) for c in children if c.get("finished_at")]
        span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        work = sum(c.get("duration_s") or 0.0 for c in children)
        how, fanned = f"{span:.2f} s", f", {len(children)} sub-agents side by side ({work:.2f} s of work)"
    error = f": {step['error']}" if step.get("error") and step["status"] != "succeeded" else ""
    return f"   {screen.label(step['step_id'])} {screen.status(step['status'])} {how}{fanned}{error}"


async def fanout_and_resume(client: Client, screen: Screen, pace: Pace) -> str:
    """Section 7; returns the id of the resumed flow."""
    screen.section("7. Agent work as a flow: plan -> one sub-agent per file (for_each) -> review; then resume")
    first = await call(client, "dispatch_flow", steps=agent_steps(pace, review_fails=True), wait_s=50)
    for step in first["steps"]:
        screen.say(_line(step, screen))
    if first["status"] != "failed" or first["steps"][-1]["status"] != "failed":
        raise DemoFailed(f"the first run should fail at its review (deliberately): {first['status']}")
    document = first["steps"][1]
    if len(document["children"]) != len(FILES) or document["status"] != "succeeded":
        raise DemoFailed(f"the fan-out did not give {len(FILES)} succeeded sub-agents: {document}")
    screen.note("the review failed on purpose (--fail); fixed, the flow runs again with resume: " + first["flow_id"])
    second = await call(
        client, "dispatch_flow", steps=agent_steps(pace, review_fails=False), resume=first["flow_id"], wait_s=50
    )
    for step in second["steps"]:
        screen.say(_line(step, screen))
    ran = [s["step_id"] for s in second["steps"] if not s["cached"]]
    if second["status"] != "succeeded" or ran != ["review"] or second["cached_steps"] != 2:
        raise DemoFailed(f"the resumed flow should run only the review: {second['status']}, ran {ran}")
    screen.say(
        "   "
        + screen.good(f"resumed: {second['cached_steps']} steps cached, only the review ran again")
        + f" (wall {second['wall_s']:.2f} s, against {first['wall_s']:.2f} s for the first run)"
    )
    return str(second["flow_id"])
