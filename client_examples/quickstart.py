"""Quickstart: drive effectd from Python with the official MCP client, over stdio.

    python client_examples/quickstart.py

It starts `effectd serve` as a subprocess (the way an agent harness does), then:

1. runs a command in the foreground, printing the progress notifications effectd sends while it waits;
2. starts a command in the background and follows its output with `stream_effect`;
3. polls an effect's record;
4. cancels a long-running effect;
5. shows what a refused call looks like.

Needs only effectd installed in this Python environment (`pip install -e .` in the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

PYTHON = sys.executable  # the one program this server may run as a `command` effect


def effectd_executable() -> str:
    """The `effectd` script installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "effectd"
    found = str(beside) if beside.exists() else shutil.which("effectd")
    if found is None:
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    return found


def text_of(result: Any) -> str:
    """The text of a tool result (where a refusal's message is)."""
    return " ".join(getattr(block, "text", "") for block in result.content)


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """Calls a tool and returns its structured result; raises with the server's message if it refused."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(text_of(result))
    return result.structured_content


async def main(db: Path) -> None:
    server = StdioServerParameters(
        command=effectd_executable(),
        args=["serve", "--allow-command", PYTHON, "--db", str(db)],
        # The stdio client passes the server only HOME, PATH and a few other variables unless told.
        env=dict(os.environ),
    )
    async with Client(server, read_timeout_seconds=70) as client:
        tools = await client.list_tools()
        print("effectd tools:", ", ".join(sorted(tool.name for tool in tools.tools)))

        # 1. Foreground: the call returns when the effect ends (or after wait_s, at most 55 s).
        #    Meanwhile effectd sends the latest output line as an MCP progress notification.
        print("\n1. foreground dispatch, with progress notifications")

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            print(f"   progress ({int(progress)} bytes so far): {message}")

        count = "import time\nfor i in range(1, 6):\n    print(f'counting {i}/5', flush=True)\n    time.sleep(0.3)"
        result = await client.call_tool(
            "dispatch_effect",
            {"command": [PYTHON, "-c", count], "label": "count"},
            progress_callback=on_progress,
        )
        record = result.structured_content or {}
        print(f"   -> {record['status']}, exit code {record['exit_code']}, in {record['duration_s']:.2f} s")
        print(f"   -> output_tail: {record['output_tail']!r}")

        # 2. Background: returns at once with the effect id; read its output as it arrives.
        #    stream_effect long-polls: with wait_s it waits for new output, and `cursor` says where to go on.
        print("\n2. background dispatch, followed with stream_effect")
        script = (
            "import json, os, time\n"
            "for part in ('fetching', 'parsing', 'writing'):\n"
            "    print(part, flush=True)\n"
            "    time.sleep(0.4)\n"
            "json.dump({'rows': 42}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))  # becomes the record's result\n"
        )
        record = await call(client, "dispatch_effect", command=[PYTHON, "-c", script], background=True, label="etl")
        effect_id = record["effect_id"]
        print(f"   dispatched {effect_id} ({record['status']})")
        cursor = 0
        while True:
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=10)
            for line in chunk["data"].splitlines():
                print(f"   [etl] {line}")
            cursor = chunk["cursor"]
            if chunk["eof"]:  # the effect has ended and every byte of its output was read
                break

        # 3. Poll: the record at any time (also after the server restarts: it is in the journal).
        record = await call(client, "poll_effect", effect_id=effect_id)
        print(f"\n3. poll_effect: {record['status']}, result {json.dumps(record['result'])}")

        # 4. Cancel: SIGTERM to the effect's whole process group, SIGKILL after grace_s.
        print("\n4. cancel a long-running effect")
        sleeper = [PYTHON, "-c", "import time; print('sleeping', flush=True); time.sleep(300)"]
        record = await call(client, "dispatch_effect", command=sleeper, background=True, label="sleeper")
        await call(client, "stream_effect", effect_id=record["effect_id"], wait_s=10)  # wait until it has started
        record = await call(client, "cancel_effect", effect_id=record["effect_id"], reason="not needed", grace_s=1)
        print(
            f"   -> {record['status']} (cancel_reason {record['cancel_reason']}, message {record['cancel_message']!r})"
        )

        # 5. A refused call: is_error with a message that says what is allowed. Nothing was started.
        print("\n5. a refused call")
        refused = await client.call_tool("dispatch_effect", {"command": ["rm", "-rf", "/tmp/nothing"]})
        print(f"   is_error={refused.is_error}: {text_of(refused)}")

        listed = await call(client, "list_effects")
        print(f"\n{len(listed['effects'])} effects in the journal at {db}:")
        for effect in listed["effects"]:
            print(f"   {effect['effect_id']}  {effect['status']:<10} {effect['label']}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="effectd-quickstart-") as tmp:
        anyio.run(main, Path(tmp) / "journal.db")
