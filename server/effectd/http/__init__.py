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
