"""The scripted model server speaks each API's streaming wire format and follows its script."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from tests.model_server import Conversation, Error, ModelServer, Script, Text, ToolCall


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def post(server: ModelServer, path: str, body: dict[str, Any]) -> Reply:
    """POSTs JSON to the server (stdlib only) and reads the whole reply."""
    request = urllib.request.Request(
        server.url + path, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode())


def sse(response: Reply) -> list[dict[str, Any]]:
    """The JSON data of each SSE frame (``[DONE]`` kept as a string marker)."""
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append({"done": True} if payload == "[DONE]" else json.loads(payload))
    return events


SCRIPT = Script(
    [
        Conversation("ALPHA", [ToolCall("Bash", {"command": "echo hi"}, text="Let me run it."), Text("It said hi.")]),
        Conversation("BROKEN", [Error(400, "scripted: prompt is too long")]),
    ]
)


@pytest.fixture(scope="module")
def server():
    with ModelServer(SCRIPT) as running:
        yield running


def test_it_listens_on_loopback_only(server):
    assert server.url.startswith("http://127.0.0.1:") and server.bound_address == ("127.0.0.1", server.port)
    outward = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in outward - {"127.0.0.1", "127.0.1.1"}:
        with pytest.raises(OSError), socket.create_connection((address, server.port), timeout=2):
            pass


def test_anthropic_messages_stream_a_tool_call_then_the_answer(server):
    first = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "ALPHA: run echo"}]}
    response = post(server, "/v1/messages?beta=true", first)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in events if e.get("delta", {}).get("type") == "text_delta")
    assert text == "Let me run it."
    tool = next(e["content_block"] for e in events if e["type"] == "content_block_start" and e["index"] == 1)
    assert tool["type"] == "tool_use" and tool["name"] == "Bash"
    arguments = next(e["delta"]["partial_json"] for e in events if e.get("delta", {}).get("type") == "input_json_delta")
    assert json.loads(arguments) == {"command": "echo hi"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use" and events[-2]["usage"]["output_tokens"] > 0

    history = first["messages"] + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": tool["id"], "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"], "content": "hi"}]},
    ]
    events = sse(post(server, "/v1/messages", dict(first, messages=history)))
    text = "".join(e["delta"]["text"] for e in events if e.get("delta", {}).get("type") == "text_delta")
    assert text == "It said hi." and events[-2]["delta"]["stop_reason"] == "end_turn"
    served = [(r.query, r.turn_index) for r in server.recorded("/v1/messages", match="ALPHA")]
    assert served[-2:] == [("beta=true", 0), ("", 1)]
    assert server.recorded(match="ALPHA")[-1].body["messages"][-1]["content"][0]["content"] == "hi"


def test_an_error_turn_answers_with_its_status_and_the_api_error_body(server):
    response = post(server, "/v1/messages", {"stream": True, "messages": [{"role": "user", "content": "BROKEN"}]})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "scripted: prompt is too long"},
    }
    openai = post(server, "/v1/responses", {"stream": True, "input": [{"role": "user", "content": "BROKEN"}]})
    assert openai.status_code == 400 and openai.json()["error"]["message"] == "scripted: prompt is too long"


def test_openai_responses_stream_counts_a_turn_per_run_of_assistant_items(server):
    user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ALPHA go"}]}
    events = sse(post(server, "/v1/responses", {"stream": True, "input": [user]}))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [item["type"] for item in done] == ["message", "function_call"]
    assert done[0]["content"][0]["text"] == "Let me run it." and json.loads(done[1]["arguments"]) == {
        "command": "echo hi"
    }
    assert events[-1]["response"]["usage"]["total_tokens"] > 0
    history = [user, done[0], done[1], {"type": "function_call_output", "call_id": done[1]["call_id"], "output": "hi"}]
    events = sse(post(server, "/v1/responses", {"stream": True, "input": history}))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [item["content"][0]["text"] for item in done] == ["It said hi."]


def test_chat_completions_stream_tool_calls_usage_and_done(server):
    body = {"stream": True, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "ALPHA"}]}
    frames = sse(post(server, "/v1/chat/completions", body))
    assert frames[-1] == {"done": True}
    deltas = [f["choices"][0]["delta"] for f in frames[:-1] if f.get("choices")]
    assert "".join(d.get("content", "") for d in deltas) == "Let me run it."
    call = next(d["tool_calls"][0] for d in deltas if "tool_calls" in d)
    assert call["function"]["name"] == "Bash" and json.loads(call["function"]["arguments"]) == {"command": "echo hi"}
    assert [f["choices"][0]["finish_reason"] for f in frames[:-1] if f.get("choices")][-1] == "tool_calls"
    assert any(f.get("usage", {}).get("total_tokens") for f in frames[:-1])


def test_unmatched_requests_get_the_default_turn_and_everything_is_recorded(server):
    response = post(server, "/v1/messages", {"messages": [{"role": "user", "content": "something else"}]})
    assert response.json()["content"] == [{"type": "text", "text": "ok"}]
    assert post(server, "/v1/unknown", {}).status_code == 404
    paths = [r.path for r in server.recorded()]
    assert "/v1/unknown" in paths and server.recorded(match=None)[-1].body == {}


def test_gemini_stream_generate_content_a_function_call_then_the_answer_and_google_errors(server):
    path = "/v1beta/models/m:streamGenerateContent?alt=sse"
    user = {"role": "user", "parts": [{"text": "<session_context>...</session_context>"}, {"text": "ALPHA go"}]}
    frames = sse(post(server, path, {"contents": [user]}))
    parts = [p for f in frames for p in f["candidates"][0]["content"]["parts"]]
    assert "".join(p.get("text", "") for p in parts) == "Let me run it."
    assert [p["functionCall"] for p in parts if "functionCall" in p] == [
        {"name": "Bash", "args": {"command": "echo hi"}}
    ]
    assert [f["candidates"][0].get("finishReason") for f in frames][-1] == "STOP"
    assert "usageMetadata" not in frames[0] and frames[-1]["usageMetadata"]["totalTokenCount"] > 0
    model_turn = {"role": "model", "parts": [{"text": "Let me run it."}, {"functionCall": parts[-1]["functionCall"]}]}
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "Bash", "response": {"output": "hi"}}}]}
    frames = sse(post(server, path, {"contents": [user, model_turn, answer]}))
    assert "".join(p.get("text", "") for f in frames for p in f["candidates"][0]["content"]["parts"]) == "It said hi."
    assert [(r.query, r.turn_index) for r in server.recorded("/v1beta/models/m:streamGenerateContent")] == [
        ("alt=sse", 0),
        ("alt=sse", 1),
    ]
    whole = post(server, "/v1beta/models/m:generateContent", {"contents": [user]}).json()
    assert [list(p) for p in whole["candidates"][0]["content"]["parts"]] == [["text"], ["functionCall"]]
    broken = post(server, path, {"contents": [{"role": "user", "parts": [{"text": "BROKEN"}]}]})
    assert broken.status_code == 400 and broken.json() == {
        "error": {"code": 400, "message": "scripted: prompt is too long", "status": "INVALID_ARGUMENT"}
    }
    assert post(server, "/v1beta/models/m:countTokens", {}).status_code == 404
