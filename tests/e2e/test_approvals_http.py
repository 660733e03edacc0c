"""Approvals over the dashboard's JSON API and event stream (issue 25), through the real HTTP server
(`serving`): the pending ones are listed with their tool input summarised, answered with `decided_by:
"dashboard"`, and every bad answer is a 4xx that says what is allowed and changes nothing. The
sub-agent is `effectd.demo.asker` (`with_asker`), which writes its file only when allowed."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.http.wire import INPUT_CHARS
from effectd.journal.approvals import REQUESTED
from effectd.journal.projection import Event
from tests.helpers.approvals import pending_of, with_asker
from tests.helpers.http import TOKEN, http_client, serving, sse_events
from tests.helpers.mcp import call

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_api_answers_a_pending_approval_and_refuses_bad_answers_changing_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    target, content = tmp_path / "out.txt", "<b>bold</b> " + "x" * 5000
    async with (
        Engine.open(with_asker(settings)) as engine,
        serving(engine, token=TOKEN) as url,
        http_client(url, TOKEN) as client,
        httpx2.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http,
        httpx2.AsyncClient(base_url=url, timeout=30) as stranger,  # without the token
    ):
        prompt = f"write {target} {content}"
        started = await call(
            client, "dispatch_effect", harness="asker", prompt=prompt, approvals="ask", background=True
        )
        approval_id = (await pending_of(engine, started["effect_id"]))["approval_id"]
        listed = (await http.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
        assert [a["approval_id"] for a in listed] == [approval_id] and listed[0]["tool"] == "Write"
        assert "input" not in listed[0] and listed[0]["input_fields"] == 2
        assert listed[0]["input_summary"] == [
            {"field": "file_path", "text": str(target), "chars": len(str(target))},
            {"field": "content", "text": content[:INPUT_CHARS], "chars": len(content)},
        ]
        row = (await http.get("/api/effects")).json()["effects"][0]
        assert (row["status"], row["waiting_for"]) == ("running", "approval")

        answer = f"/api/approvals/{approval_id}/answer"
        shape = '{"decision": "allow" | "deny", "message"?: string}'
        json_type = {"Content-Type": "application/json"}
        nope = "/api/approvals/apr_nope/answer"
        refusals = [
            (http.post(answer, content=b"allow", headers=json_type), 400, f"not JSON; expected {shape}"),
            (http.post(answer, data={"decision": "allow"}), 400, f"Content-Type: application/json: {shape}"),
            (http.post(answer, json=["allow"]), 400, f"must be a JSON object: {shape}"),
            (http.post(answer, json={"decision": "maybe"}), 400, '`decision` must be "allow" or "deny", not "maybe"'),
            (http.post(answer, json={}), 400, '`decision` must be "allow" or "deny", not null'),
            (http.post(answer, json={"decision": "allow", "updated_input": {}}), 400, "unknown field 'updated_input'"),
            (http.post(answer, json={"decision": "deny", "message": 7}), 400, "`message` must be a string"),
            (http.post(answer, json={"decision": "deny", "message": "m" * 10_001}), 400, "at most 10000 characters"),
            (http.post(nope, json={"decision": "allow"}), 404, "unknown approval 'apr_nope'"),
            (http.get("/api/approvals", params={"status": "waiting"}), 400, "allowed: pending, allowed, denied"),
            (
                http.post(answer, json={"decision": "allow"}, headers={"Origin": "http://evil.example"}),
                403,
                "Origin 'http://evil.example' may not call this server",
            ),
            (
                stranger.post(answer, json={"decision": "allow"}),
                401,
                "missing or wrong bearer token",
            ),
        ]  # fmt: skip
        for sent, status, message in refusals:
            refused = await sent
            assert refused.status_code == status and message in refused.json()["error"], refused.text
        assert [a["status"] for a in engine.approvals.list()] == ["pending"], "a refused answer changed nothing"
        assert not target.exists()

        allowed = await http.post(answer, json={"decision": "allow"})
        assert allowed.status_code == 200, allowed.text
        assert (allowed.json()["status"], allowed.json()["decided_by"]) == ("allowed", "dashboard")
        with anyio.fail_after(30):
            while not target.exists():  # noqa: ASYNC110 - the sub-agent's write, polled with a bound
                await anyio.sleep(0.02)
        again = await http.post(answer, json={"decision": "deny", "message": "too late"})
        assert (
            again.status_code == 400
            and f"approval {approval_id} is already answered: allowed by dashboard" in (again.json()["error"])
        )
        (kept,) = engine.approvals.list()
    assert target.read_text() == content
    assert (kept["status"], kept["decided_by"], kept["message"]) == ("allowed", "dashboard", None)
    assert kept["answered_at"] == allowed.json()["answered_at"], "the second answer changed nothing"


async def test_the_event_stream_sends_the_pending_approvals_as_they_come_and_go(
    settings: Settings, tmp_path: Path
) -> None:
    target = tmp_path / "out.txt"
    async with (
        Engine.open(with_asker(settings)) as engine,
        serving(engine) as url,
        http_client(url) as client,
        httpx2.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("GET", "/api/events", timeout=httpx2.Timeout(10, read=60)) as response,
    ):
        events = sse_events(response)
        name, snapshot = await anext(events)
        assert name == "snapshot" and snapshot["approvals"] == []
        prompt = f"write {target} hello"
        started = await call(
            client, "dispatch_effect", harness="asker", prompt=prompt, approvals="ask", background=True
        )
        sent: list[list[str]] = []  # each `approvals` the stream sent: the pending approval ids
        with anyio.fail_after(30):
            async for name, data in events:
                assert name == "effects"
                if "approvals" in data:
                    sent.append([approval["approval_id"] for approval in data["approvals"]])
                    if data["approvals"]:
                        assert data["approvals"][0]["effect_id"] == started["effect_id"]
                        assert data["approvals"][0]["input_summary"][1] == {
                            "field": "content", "text": "hello", "chars": 5,
                        }  # fmt: skip
                        waiting = [row for row in data["effects"] if row["effect_id"] == started["effect_id"]]
                        assert waiting and waiting[0]["waiting_for"] == "approval"
                        denied = await http.post(
                            f"/api/approvals/{sent[-1][0]}/answer", json={"decision": "deny", "message": " not now "}
                        )
                        assert denied.status_code == 200, denied.text
                    else:
                        break
        await call(client, "await_group", effect_ids=[started["effect_id"]], timeout_s=30)
        record = await call(client, "poll_effect", effect_id=started["effect_id"])
        (approval,) = engine.approvals.list()
    assert len(sent) == 2 and sent[1] == [], "the pending ones were sent when they changed, and only then"
    assert (approval["status"], approval["decided_by"], approval["message"]) == ("denied", "dashboard", "not now")
    assert record["status"] == "succeeded" and "denied: not now" in record["output_tail"]
    assert not target.exists()


async def test_the_stream_offers_only_the_approvals_an_answer_from_here_reaches(
    settings: Settings, tmp_path: Path
) -> None:
    # A request another server journaled for an effect no live server runs (its server is gone, not yet
    # settled): list_approvals lists it, but no answer reaches its asker, so the dashboard offers no buttons.
    orphan = {
        "approval_id": "apr_orphan", "effect_id": "eff_gone", "run_id": "run_gone", "group": None, "tool": "Write",
        "input": {"file_path": "x", "content": "y"}, "status": "pending", "decided_by": None, "message": None,
        "requested_at": "2026-12-08T00:00:00Z", "answered_at": None,
    }  # fmt: skip
    target = tmp_path / "out.txt"
    async with (
        Engine.open(with_asker(settings)) as engine,
        serving(engine) as url,
        http_client(url) as client,
        httpx2.AsyncClient(base_url=url, timeout=30, headers=AUTH) as http,
    ):
        engine.approvals.seen(Event(REQUESTED, "run_gone", "eff_gone", orphan, seq=1))
        listed = await call(client, "list_approvals", status="pending")
        assert [a["approval_id"] for a in listed["approvals"]] == ["apr_orphan"]
        refused = await http.post("/api/approvals/apr_orphan/answer", json={"decision": "allow"})
        assert refused.status_code in (400, 409) and "no sub-agent waits for it" in refused.text, refused.text
        started = await call(
            client, "dispatch_effect", harness="asker", prompt=f"write {target} hi", approvals="ask", background=True
        )
        await pending_of(engine, started["effect_id"])
        async with http.stream("GET", "/api/events", timeout=httpx2.Timeout(10, read=60)) as response:
            name, snapshot = await anext(sse_events(response))
        assert name == "snapshot"
        assert [a["effect_id"] for a in snapshot["approvals"]] == [started["effect_id"]], snapshot["approvals"]
        await call(client, "cancel_effect", effect_id=started["effect_id"], grace_s=0.5)
        await call(client, "await_group", effect_ids=[started["effect_id"]], timeout_s=30)
