"""MCP resources: an effect's record and output, and updates to subscribed clients while it runs, for
2026-07-28 clients (`subscriptions/listen`) and earlier ones (`resources/subscribe`), in memory and over HTTP."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, ResourceUpdatedNotification

from effectd.app import build_server
from effectd.engine.core import Engine
from tests.helpers.http import WAIT_FOR_FILE, http_client, serving
from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio

# Prints a line, waits for a file (bounded), prints another: a test decides when output arrives.
TWO_LINES = (
    "import os, sys, time\n"
    "print('first line', flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
    "print('second line', flush=True)\n"
)


def record_uri(effect_id: str) -> str:
    return f"effectd://effects/{effect_id}"


def output_uri(effect_id: str) -> str:
    return f"effectd://effects/{effect_id}/output"


async def read_record(client: Client, effect_id: str) -> dict[str, Any]:
    contents = (await client.read_resource(record_uri(effect_id), cache_mode="bypass")).contents
    assert contents[0].mime_type == "application/json"
    return dict(json.loads(contents[0].text))  # type: ignore[union-attr]


async def read_output(client: Client, effect_id: str) -> str:
    contents = (await client.read_resource(output_uri(effect_id), cache_mode="bypass")).contents
    return str(contents[0].text)  # type: ignore[union-attr]


async def test_the_templates_are_listed(client: Client) -> None:
    templates = {t.uri_template: t for t in (await client.list_resource_templates()).resource_templates}
    assert set(templates) == {"effectd://effects/{effect_id}", "effectd://effects/{effect_id}/output"}
    assert templates["effectd://effects/{effect_id}"].mime_type == "application/json"
    assert templates["effectd://effects/{effect_id}/output"].mime_type == "text/plain"


async def test_reading_an_effects_record_and_output(client: Client) -> None:
    record = await call(client, "dispatch_effect", command=py("print('hello'); print('world')"), label="two lines")
    assert record["status"] == "succeeded"
    as_resource = await read_record(client, record["effect_id"])
    assert as_resource == await call(client, "poll_effect", effect_id=record["effect_id"])
    assert as_resource["label"] == "two lines" and as_resource["status"] == "succeeded"
    assert await read_output(client, record["effect_id"]) == "hello\nworld\n"


async def test_an_unknown_effect_id_is_an_error(client: Client) -> None:
    for uri in (record_uri("eff_nope"), output_uri("eff_nope")):
        with pytest.raises(MCPError) as caught:
            await client.read_resource(uri, cache_mode="bypass")
        assert caught.value.code == INVALID_PARAMS and "eff_nope" in str(caught.value)


async def test_the_output_resource_keeps_only_the_last_256_kib(client: Client) -> None:
    lines = "import sys\nprint('x' * 99)\nfor i in range(5000):\n    print(f'{i:09d}' + 'y' * 90)"
    record = await call(client, "dispatch_effect", command=py(lines))
    text = await read_output(client, record["effect_id"])
    assert record["output_bytes"] == 100 * 5001
    assert text.startswith("[effectd: earlier output omitted, 500100 bytes in all; stream_effect reads all of it]\n")
    assert text.endswith(f"{4999:09d}{'y' * 90}\n") and len(text.encode()) <= 256 * 1024 + 200


async def test_a_listening_client_gets_updates_while_an_effect_runs(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with Client(build_server(engine), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(TWO_LINES, str(gate)), background=True)
        effect_id = record["effect_id"]
        uris = [record_uri(effect_id), output_uri(effect_id)]
        updates: list[str] = []
        async with client.listen(resource_subscriptions=uris) as subscription:
            assert set(subscription.honored.resource_subscriptions or []) == set(uris)
            with anyio.fail_after(30):
                async for event in subscription:
                    updates.append(event.uri)  # type: ignore[union-attr]
                    if event.uri == output_uri(effect_id) and "first line" in await read_output(client, effect_id):  # type: ignore[union-attr]
                        break
            assert (await read_record(client, effect_id))["status"] == "running"
            gate.touch()  # the effect prints its second line and ends
            with anyio.fail_after(30):
                async for event in subscription:
                    updates.append(event.uri)  # type: ignore[union-attr]
                    if (await read_record(client, effect_id))["status"] == "succeeded":
                        break
        assert await read_output(client, effect_id) == "first line\nsecond line\n"
        assert set(updates) == set(uris)


@asynccontextmanager
async def legacy_client(engine: Engine, over: str, on_message: Any) -> AsyncIterator[Client]:
    """A 2025-protocol client (initialize handshake, resources/subscribe) in memory or over HTTP."""
    if over == "memory":
        async with Client(build_server(engine), mode="legacy", message_handler=on_message) as client:
            yield client
        return
    async with serving(engine) as url, httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(f"{url}/mcp", http_client=http)
        async with Client(transport, mode="legacy", message_handler=on_message, read_timeout_seconds=70) as client:
            yield client


@pytest.mark.parametrize("over", ["memory", "http"])
async def test_a_subscribed_client_of_an_earlier_protocol_gets_resource_updated_notifications(
    engine: Engine, tmp_path: Path, over: str
) -> None:
    gate = tmp_path / "gate"
    notified: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        nonlocal arrived
        if isinstance(message, ResourceUpdatedNotification):
            notified.append(message.params.uri)
            arrived.set()
            arrived = anyio.Event()

    async with legacy_client(engine, over, on_message) as client:
        assert client.protocol_version.startswith("2025")
        resources = client.server_capabilities.resources
        assert resources is not None and resources.subscribe
        record = await call(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True)
        effect_id = record["effect_id"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is deprecated for 2026-07-28 clients only
            await client.subscribe_resource(record_uri(effect_id))
            await client.subscribe_resource(output_uri(effect_id))
            with pytest.raises(MCPError, match="eff_nope"):
                await client.subscribe_resource(record_uri("eff_nope"))
            with pytest.raises(MCPError, match="effectd serves"):
                await client.subscribe_resource("effectd://runs/x")
        gate.touch()
        with anyio.fail_after(30):
            while (await read_record(client, effect_id))["status"] != "succeeded" or output_uri(
                effect_id
            ) not in notified:
                await arrived.wait()
        assert record_uri(effect_id) in notified
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.unsubscribe_resource(record_uri(effect_id))
            await client.unsubscribe_resource(output_uri(effect_id))
    await wait_until(lambda: engine.subscribers == 0)  # the feed stops watching once nobody subscribes


async def test_updates_are_coalesced(engine: Engine) -> None:
    loud = py("import sys\nfor i in range(3000):\n    print(i, flush=True)")
    async with Client(build_server(engine), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py("import time; time.sleep(0.3)"), background=True)
        noisy = await call(client, "dispatch_effect", command=loud, depends_on=[record["effect_id"]], background=True)
        effect_id = noisy["effect_id"]
        events = 0
        async with client.listen(resource_subscriptions=[output_uri(effect_id)]) as subscription:
            with anyio.fail_after(30):
                async for _ in subscription:
                    events += 1
                    if (await read_record(client, effect_id))["status"] == "succeeded":
                        break
        took = (await read_record(client, effect_id))["duration_s"]
    # 3000 flushed lines, but at most ten updates a second (plus the one that reports the end).
    assert 1 <= events <= 10 * (took + 1) + 2, (events, took)
    await wait_until(lambda: engine.subscribers == 0)


async def test_a_client_over_http_gets_updates_while_an_effect_runs(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with serving(engine) as url, http_client(url) as client:
        record = await call(client, "dispatch_effect", command=py(TWO_LINES, str(gate)), background=True)
        effect_id = record["effect_id"]
        async with client.listen(resource_subscriptions=[record_uri(effect_id)]) as subscription:
            gate.touch()
            with anyio.fail_after(30):
                async for event in subscription:
                    assert event.uri == record_uri(effect_id)  # type: ignore[union-attr]
                    if (await read_record(client, effect_id))["status"] == "succeeded":
                        break
        assert await read_output(client, effect_id) == "first line\nsecond line\n"
