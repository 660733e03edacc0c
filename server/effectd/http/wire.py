"""What the HTTP surface reads and writes: query parameters and JSON bodies (a bad one is `BadRequest`,
answered 400), JSON errors, effects and approvals as the dashboard shows them, and server-sent event frames."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from effectd.model.records import STATUSES, EffectRecord

N = TypeVar("N", int, float)

MAX_BODY = 64 * 1024  # a JSON body the API takes (an answer and its message) is small
INPUT_CHARS = 600  # of each field of an approval's tool input, the dashboard is sent this many characters
INPUT_FIELDS = 20  # and this many fields


class BadRequest(Exception):
    """Raised when a query parameter cannot be used; answered with 400 and the message."""


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def not_found(request: Request, exc: Exception) -> Response:
    """The exception handler for an unknown effect, flow or group."""
    return error_response(404, str(exc))


async def bad_request(request: Request, exc: Exception) -> Response:
    """The exception handler for a bad parameter or a request the engine refuses."""
    return error_response(400, str(exc))


# --- query parameters ----------------------------------------------------------------------------


def _number_param(request: Request, name: str, kind: type[N], default: N, low: N, high: N) -> N:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"`{name}` must be between {_shown(low)} and {_shown(high)}, not {_shown(value)}")
    return value


def _shown(number: float) -> str:
    """A number as a reader takes it: an integer in full (a big power of two also as 2**n, since that is
    what it is), never as `4.61169e+18`; a float as short as it goes."""
    if isinstance(number, int):
        power = number.bit_length() - 1
        return f"{number} (2**{power})" if number >= 1 << 32 and number == 1 << power else str(number)
    return f"{number:g}"


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    return _number_param(request, name, int, default, low, high)


def float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    return _number_param(request, name, float, default, low, high)


def statuses_param(request: Request) -> list[str] | None:
    """The `status` filter: repeated or comma-separated statuses, None when there is none."""
    values = [part for raw in request.query_params.getlist("status") for part in raw.split(",") if part]
    unknown = sorted(set(values) - set(STATUSES))
    if unknown:
        raise BadRequest(f"unknown status {', '.join(unknown)}; allowed: {', '.join(STATUSES)}")
    return values or None


async def json_body(request: Request, shape: str) -> dict[str, Any]:
    """The request's body as a JSON object, at most MAX_BODY bytes; `shape` says what is expected in the error."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest(f"send a JSON body with Content-Type: application/json: {shape}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"the body is over {MAX_BODY} bytes; expected {shape}")
    try:
        value = json.loads(body)
    except ValueError:
        raise BadRequest(f"the body is not JSON; expected {shape}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the body must be a JSON object: {shape}")
    return value


# --- records as the dashboard shows them ---------------------------------------------------------


def cost_of(record: EffectRecord) -> float | None:
    result = record.result
    if isinstance(result, dict) and isinstance(result.get("cost_usd"), int | float):
        return float(result["cost_usd"])
    return None


def row_of(record: EffectRecord) -> dict[str, Any]:
    """An effect as a table row: the record without its output tail, result and progress (the detail
    endpoint has them), plus `cost_usd` from the result and the latest assistant text."""
    row = record.model_dump(mode="json", exclude={"output_tail", "result", "progress"})
    row["cost_usd"] = cost_of(record)
    progress = record.progress or {}
    row["last_text"] = progress.get("last_text") if isinstance(progress.get("last_text"), str) else None
    if record.workspace is not None:  # the detail endpoint has every changed file; a row only the count
        row["workspace"] = {
            **record.workspace,
            "changed_files": [],
            "changed_files_count": len(record.workspace.get("changed_files") or []),
        }
    return row


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: its name and its data as compact JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def approval_row(approval: dict[str, Any]) -> dict[str, Any]:
    """An approval as the dashboard lists it: its tool input summarised (each field as text, cut at
    INPUT_CHARS, with its full length; at most INPUT_FIELDS fields), since a `Write`'s content can be
    megabytes and every pending approval goes out on each change."""
    row = {key: value for key, value in approval.items() if key not in ("input", "updated_input")}
    fields = list(approval["input"].items())
    summary = []
    for key, value in fields[:INPUT_FIELDS]:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        summary.append({"field": key, "text": text[:INPUT_CHARS], "chars": len(text)})
    row["input_summary"] = summary
    row["input_fields"] = len(fields)
    return row
