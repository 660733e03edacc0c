"""`effectd serve --http`: MCP over streamable HTTP at `/mcp`, the live dashboard at `/`, its JSON API
under `/api/`, all in the server's own event loop over the one open engine.

- `security`: the bind (a public address needs a token) and the gate every request passes first
  (Host and Origin against DNS rebinding, then the bearer token).
- `pages`: the dashboard's static files.
- `api`: the JSON endpoints, queries and cancels.
- `streams`: the live server-sent event streams (changed effects, an effect's output).
- `wire`: query parameters, JSON errors, effect rows and event frames, shared by the above.
- `stopping`: how a stop reaches the requests still waiting.
- `serve`: `HttpSurface` composes these into one ASGI app; `serve_http` runs it with uvicorn and
  stops it in order.

The HTTP code reaches the engine only through `Engine`'s public methods.
"""

from effectd.http.api import CANCEL_MESSAGE, JsonApi
from effectd.http.security import Gate, check_http_options, is_loopback, open_listener, prepare_http
from effectd.http.serve import STOP_BOUND_S, HttpSurface, serve_http
from effectd.http.streams import KEEPALIVE_S, MESSAGES_PER_S, SNAPSHOT_LIMIT, LiveStreams
from effectd.http.wire import BadRequest, cost_of, row_of

__all__ = [
    "CANCEL_MESSAGE",
    "KEEPALIVE_S",
    "MESSAGES_PER_S",
    "SNAPSHOT_LIMIT",
    "STOP_BOUND_S",
    "BadRequest",
    "Gate",
    "HttpSurface",
    "JsonApi",
    "LiveStreams",
    "check_http_options",
    "cost_of",
    "is_loopback",
    "open_listener",
    "prepare_http",
    "row_of",
    "serve_http",
]
