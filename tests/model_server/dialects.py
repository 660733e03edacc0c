"""The four wire dialects: how each reads a request's history and streams a scripted turn.

- Anthropic Messages (``POST /v1/messages``; Claude Code adds ``?beta=true``): SSE events
  ``message_start``, ``content_block_start``/``_delta``/``_stop``, ``message_delta`` (usage), ``message_stop``.
- OpenAI Responses (``POST /v1/responses``, codex): ``response.created``, ``response.output_item.added``,
  ``response.output_text.delta``, ``response.output_item.done``, ``response.completed`` (usage).
- OpenAI Chat Completions (``POST /v1/chat/completions``): ``chat.completion.chunk`` frames, ``[DONE]``.
- Gemini (``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``, Gemini CLI): SSE ``data:``
  frames, each a ``GenerateContentResponse`` (``candidates[0].content.parts`` with ``text`` or
  ``functionCall``); the last has ``finishReason`` and ``usageMetadata``. ``:generateContent`` is
  the same turn as one JSON response.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from tests.model_server.script import Error, Text, ToolCall, Turn, chunks, dumps, text_of

_ids = itertools.count(1)

INPUT_TOKENS = 120
OUTPUT_TOKENS = 30


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}scripted"


def _opening(messages: list[Any], role_key: str = "role") -> str:
    """User text before the first assistant message."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get(role_key) == "assistant" or message.get("type") in ("function_call", "reasoning"):
            break
        if message.get(role_key) == "user":
            parts.append(text_of(message.get("content")))
    return "\n".join(parts)


def _assistant_turns(messages: list[Any]) -> int:
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


# --- Anthropic Messages --------------------------------------------------------------------------


def anthropic_position(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    return _opening(messages), _assistant_turns(messages)


def anthropic_error(turn: Error) -> dict[str, Any]:
    return {"type": "error", "error": {"type": turn.type, "message": turn.message}}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {dumps(data)}\n\n"


async def anthropic_stream(turn: Turn, model: str) -> AsyncIterator[str]:
    message = {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
    }
    yield _sse("message_start", {"type": "message_start", "message": message})
    index = 0
    text = turn.text if isinstance(turn, Text | ToolCall) else ""
    delay = turn.delay_s if isinstance(turn, Text) else 0.05
    if text:
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        for piece in chunks(text):
            await asyncio.sleep(delay)
            delta = {"type": "text_delta", "text": piece}
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        index = 1
    if isinstance(turn, ToolCall):
        block = {"type": "tool_use", "id": new_id("toolu"), "name": turn.name, "input": {}}
        yield _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        delta = {"type": "input_json_delta", "partial_json": dumps(turn.input)}
        yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    stop = "tool_use" if isinstance(turn, ToolCall) else "end_turn"
    end = {"stop_reason": stop, "stop_sequence": None}
    usage = {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS}
    yield _sse("message_delta", {"type": "message_delta", "delta": end, "usage": usage})
    yield _sse("message_stop", {"type": "message_stop"})


def anthropic_message(turn: Turn, model: str) -> dict[str, Any]:
    """The same turn as one non-streamed message."""
    content: list[dict[str, Any]] = []
    if isinstance(turn, Text | ToolCall) and turn.text:
        content.append({"type": "text", "text": turn.text})
    if isinstance(turn, ToolCall):
        content.append({"type": "tool_use", "id": new_id("toolu"), "name": turn.name, "input": turn.input})
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if isinstance(turn, ToolCall) else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    }


# --- OpenAI --------------------------------------------------------------------------------------


def openai_error(turn: Error) -> dict[str, Any]:
    return {"error": {"message": turn.message, "type": turn.type, "param": None, "code": None}}


def responses_position(body: dict[str, Any]) -> tuple[str, int]:
    """A turn is a run of consecutive assistant-side items (text, reasoning, function calls)."""
    items = [item for item in body.get("input") or [] if isinstance(item, dict)]
    turns, previous_assistant = 0, False
    for item in items:
        assistant = item.get("role") == "assistant" or item.get("type") in ("function_call", "reasoning")
        turns += assistant and not previous_assistant
        previous_assistant = assistant
    return _opening(items), turns


def _data(data: dict[str, Any]) -> str:
    return f"event: {data['type']}\ndata: {dumps(data)}\n\n"


async def responses_stream(turn: Turn, model: str) -> AsyncIterator[str]:
    response_id = new_id("resp")
    yield _data({"type": "response.created", "response": {"id": response_id, "model": model, "status": "in_progress"}})
    output_index = 0
    text = turn.text if isinstance(turn, Text | ToolCall) else ""
    delay = turn.delay_s if isinstance(turn, Text) else 0.05
    if text:
        item_id = new_id("msg")
        item = {"type": "message", "id": item_id, "role": "assistant", "status": "in_progress", "content": []}
        yield _data({"type": "response.output_item.added", "output_index": 0, "item": item})
        for piece in chunks(text):
            await asyncio.sleep(delay)
            yield _data(
                {
                    "type": "response.output_text.delta",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                }
            )
        done = dict(item, status="completed", content=[{"type": "output_text", "text": text, "annotations": []}])
        yield _data({"type": "response.output_item.done", "output_index": 0, "item": done})
        output_index = 1
    if isinstance(turn, ToolCall):
        call = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": new_id("call"),
            "name": turn.name,
            "arguments": dumps(turn.input),
            "status": "completed",
        }
        yield _data({"type": "response.output_item.added", "output_index": output_index, "item": call})
        yield _data({"type": "response.output_item.done", "output_index": output_index, "item": call})
    usage = {
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
    }
    completed = {"id": response_id, "model": model, "status": "completed", "usage": usage}
    yield _data({"type": "response.completed", "response": completed})


def chat_position(body: dict[str, Any]) -> tuple[str, int]:
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    return _opening(messages), _assistant_turns(messages)


async def chat_stream(turn: Turn, model: str) -> AsyncIterator[str]:
    chunk_id = new_id("chatcmpl")

    def frame(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
        data: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "model": model, "choices": choices}
        if usage is not None:
            data["usage"] = usage
        return f"data: {dumps(data)}\n\n"

    yield frame({"role": "assistant", "content": ""})
    text = turn.text if isinstance(turn, Text | ToolCall) else ""
    delay = turn.delay_s if isinstance(turn, Text) else 0.05
    for piece in chunks(text) if text else []:
        await asyncio.sleep(delay)
        yield frame({"content": piece})
    if isinstance(turn, ToolCall):
        call = {
            "index": 0,
            "id": new_id("call"),
            "type": "function",
            "function": {"name": turn.name, "arguments": dumps(turn.input)},
        }
        yield frame({"tool_calls": [call]})
    yield frame({}, "tool_calls" if isinstance(turn, ToolCall) else "stop")
    yield frame(
        {},
        usage={
            "prompt_tokens": INPUT_TOKENS,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        },
    )
    yield "data: [DONE]\n\n"


# --- Gemini --------------------------------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}


def gemini_error(turn: Error) -> dict[str, Any]:
    """Google's error body: ``{"error": {"code", "message", "status"}}``."""
    status = _GOOGLE_STATUS.get(turn.status, "RESOURCE_EXHAUSTED" if turn.status == 429 else "INTERNAL")
    return {"error": {"code": turn.status, "message": turn.message, "status": status}}


def gemini_position(body: dict[str, Any]) -> tuple[str, int]:
    """``contents`` alternate ``user`` and ``model``; a turn is a run of consecutive ``model`` contents."""
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    turns, previous_model = 0, False
    opening: list[str] = []
    for content in contents:
        model = content.get("role") == "model"
        turns += model and not previous_model
        previous_model = model
        if not turns:
            opening.append(text_of(content.get("parts")))
    return "\n".join(opening), turns


def _gemini_usage() -> dict[str, Any]:
    return {
        "promptTokenCount": INPUT_TOKENS,
        "candidatesTokenCount": OUTPUT_TOKENS,
        "totalTokenCount": INPUT_TOKENS + OUTPUT_TOKENS,
    }


def _gemini_response(parts: list[dict[str, Any]], model: str, response_id: str, final: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    data: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": response_id}
    if final:
        candidate["finishReason"] = "STOP"
        data["usageMetadata"] = _gemini_usage()
    return data


def _gemini_call(turn: ToolCall) -> dict[str, Any]:
    return {"functionCall": {"name": turn.name, "args": turn.input}}


async def gemini_stream(turn: Turn, model: str) -> AsyncIterator[str]:
    """Text deltas, then the function call, then an empty-parts frame with the finish reason and usage."""
    response_id = new_id("gemini")
    text = turn.text if isinstance(turn, Text | ToolCall) else ""
    delay = turn.delay_s if isinstance(turn, Text) else 0.05
    for piece in chunks(text) if text else []:
        await asyncio.sleep(delay)
        yield f"data: {dumps(_gemini_response([{'text': piece}], model, response_id, False))}\r\n\r\n"
    last = [_gemini_call(turn)] if isinstance(turn, ToolCall) else []
    yield f"data: {dumps(_gemini_response(last, model, response_id, True))}\r\n\r\n"


def gemini_message(turn: Turn, model: str) -> dict[str, Any]:
    """The same turn as one ``generateContent`` response."""
    parts: list[dict[str, Any]] = []
    if isinstance(turn, Text | ToolCall) and turn.text:
        parts.append({"text": turn.text})
    if isinstance(turn, ToolCall):
        parts.append(_gemini_call(turn))
    return _gemini_response(parts, model, new_id("gemini"), True)
