"""`limits` (memory, processes, CPU) through `effectd serve` over real stdio: enforced by each effect's own
cgroup, refused with a tool error naming what was wrong, and taken from `[limits]` in the config.

The tests that run effects under limits need a host that can enforce them (root on a cgroup v1 hybrid
host, or a delegated cgroup v2): elsewhere they are skipped, saying which controller is missing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import Controllers
from effectd.runner.local import LocalRunner
from tests.helpers.mcp import call, call_error, read_until, structured
from tests.helpers.processes import effectd_bin, py, stdio_params

pytestmark = pytest.mark.anyio
ANY = "--allow-any-command"

# What this host can enforce, as the server (a child of this process, in its cgroups) will find it.
_v2 = Cgroups.find()
HOST = Controllers.find(_v2.root if _v2 is not None else None, prepare=False)


def needs(*limits: str) -> pytest.MarkDecorator:
    why = HOST.refusal(limits)
    return pytest.mark.skipif(why is not None, reason=f"this host cannot enforce {limits}: {why}")


def limit_file(effect_id: str, limit: str) -> Path:
    """The file of the effect's cgroup that holds `limit` (v2 or v1, as this host enforces it)."""
    place = HOST.places[limit]
    v2 = place.version == 2
    name = {"memory_mb": "memory.max" if v2 else "memory.limit_in_bytes", "pids": "pids.max"}.get(limit)
    return place.root / effect_id / (name or ("cpu.max" if v2 else "cpu.cfs_quota_us"))


# Waits (bounded) until the file named by argv[1] exists: the test decides when the effect ends.
WAIT_FOR = (
    "import os, sys, time\n"
    "print('ready', flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
)

# 300 forks, each child holding its slot until the parent lets go of them all; prints how many forks
# succeeded and how many failed with EAGAIN (the pids limit), then waits for the file argv[1].
STORM = (
    "import errno, os, sys, time\n"
    "release_r, release_w = os.pipe()\n"
    "children, refused = [], 0\n"
    "for _ in range(300):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError as exc:\n"
    "        assert exc.errno == errno.EAGAIN, exc\n"
    "        refused += 1\n"
    "        continue\n"
    "    if pid == 0:\n"
    "        os.close(release_w)\n"
    "        os.read(release_r, 1)\n"
    "        os._exit(0)\n"
    "    children.append(pid)\n"
    "print(f'forked {len(children)} refused {refused}', flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
    "os.close(release_w)\n"
    "for pid in children:\n"
    "    os.waitpid(pid, 0)\n"
)


@needs("memory_mb")
async def test_a_memory_limit_ends_the_effect_failed_with_its_reason_and_its_peak(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    hog = "chunks = []\nfor _ in range(200):\n    chunks.append(bytearray(1024 * 1024))\nprint('survived')"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(hog), limits={"memory_mb": 32}, wait_s=30)
        assert record["status"] == "failed", record
        assert record["error"] == "memory limit (32 MiB) exceeded"
        assert record["limits"] == {"memory_mb": 32}
        assert record["peak_memory_mb"] is not None and 16 <= record["peak_memory_mb"] <= 33
        assert "survived" not in record["output_tail"]
        assert await call(client, "poll_effect", effect_id=record["effect_id"]) == record
        effect_id = record["effect_id"]
    with anyio.fail_after(30):
        shown = await anyio.run_process([effectd_bin(), "show", effect_id, "--db", str(db)])
    stored = json.loads(shown.stdout)  # from the journal, after the server is gone
    assert stored["error"] == "memory limit (32 MiB) exceeded"
    assert stored["limits"] == {"memory_mb": 32} and stored["peak_memory_mb"] == record["peak_memory_mb"]


@needs("pids")
async def test_a_fork_storm_never_passes_its_pids_limit_while_the_server_answers_polls_within_a_second(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    async with Client(stdio_params(tmp_path / "j.db", ANY), read_timeout_seconds=70) as client:
        storm = await call(
            client, "dispatch_effect", command=py(STORM, str(release)), limits={"pids": 40}, background=True
        )
        neighbour = await call(  # another effect, no limit: untouched by the storm
            client, "dispatch_effect", command=py(WAIT_FOR, str(release)), background=True
        )
        slowest = 0.0
        with anyio.fail_after(30):
            while (
                "forked"
                not in (record := await call(client, "poll_effect", effect_id=storm["effect_id"]))["output_tail"]
            ):
                started = time.monotonic()
                await call(client, "poll_effect", effect_id=neighbour["effect_id"])
                slowest = max(slowest, time.monotonic() - started)
                assert record["status"] in ("queued", "running"), record
        current = int(limit_file(storm["effect_id"], "pids").with_name("pids.current").read_text())
        assert current <= 40
        forked, refused = (int(n) for n in record["output_tail"].split()[1::2])
        assert forked <= 39 and forked + refused == 300 and refused > 0  # 40 with the storm itself
        for _ in range(5):
            started = time.monotonic()
            await call(client, "poll_effect", effect_id=storm["effect_id"])
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, f"a poll took {slowest:.3f} s during the storm"
        release.touch()
        ended = await call(client, "await_group", effect_ids=[storm["effect_id"], neighbour["effect_id"]])
    assert [r["status"] for r in ended["done"]] == ["succeeded", "succeeded"], ended
    assert {r["effect_id"]: r["limits"] for r in ended["done"]} == {
        storm["effect_id"]: {"pids": 40},
        neighbour["effect_id"]: None,
    }


@needs("cpu")
async def test_a_cpu_limit_of_half_a_core_is_written_into_the_effects_cgroup(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with Client(stdio_params(tmp_path / "j.db", ANY), read_timeout_seconds=70) as client:
        record = await call(
            client, "dispatch_effect", command=py(WAIT_FOR, str(release)), limits={"cpu": 0.5}, background=True
        )
        await read_until(client, record["effect_id"], "ready")
        quota = limit_file(record["effect_id"], "cpu")
        if quota.name == "cpu.max":
            assert quota.read_text().split() == ["50000", "100000"]
        else:
            assert (quota.read_text().strip(), quota.with_name("cpu.cfs_period_us").read_text().strip()) == (
                "50000",
                "100000",
            )
        release.touch()
        ended = await call(client, "poll_effect", effect_id=record["effect_id"])
        with anyio.fail_after(20):
            while ended["status"] == "running":
                ended = await call(client, "poll_effect", effect_id=record["effect_id"])
                await anyio.sleep(0.05)
    assert ended["status"] == "succeeded" and ended["limits"] == {"cpu": 0.5}
    assert not quota.parent.exists(), "the effect's cgroup outlived it"


BAD_LIMITS = [
    ({"memory_mb": 32, "swap_mb": 0}, ["swap_mb", "memory_mb", "pids", "cpu"]),
    ({"memory_mb": 8}, ["memory_mb", "16"]),
    ({"pids": 0}, ["pids", "1"]),
    ({"cpu": 0}, ["cpu", "0"]),
    ({"cpu": -1.5}, ["cpu"]),
    ({"memory_mb": "32"}, ["memory_mb", "integer"]),
    ({"memory_mb": 32.5}, ["memory_mb", "integer"]),
    ({"pids": True}, ["pids", "integer"]),
    ({"cpu": "half"}, ["cpu", "number"]),
    ({"cpu": 0.0001}, ["cpu", "0.001"]),
    ("512M", ["limits"]),
]


async def test_bad_limits_are_tool_errors_naming_them_on_effects_and_flow_steps_and_change_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        for limits, named in BAD_LIMITS:
            text = await call_error(client, "dispatch_effect", command=py("pass"), limits=limits)
            assert all(word in text for word in named), (limits, text)
            step = {"id": "build", "command": py("pass"), "limits": limits}
            text = await call_error(client, "dispatch_flow", steps=[step])
            assert all(word in text for word in named), (limits, text)
            assert "step 'build'" in text or "steps.0.limits" in text, text
        listed = await call(client, "list_effects")
    assert listed["effects"] == []


async def test_a_flow_step_takes_limits_and_the_config_gives_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "effectd.toml"
    config.write_text("[limits]\npids = 50\nmemory_mb = 256\n")
    async with Client(stdio_params(tmp_path / "j.db", ANY, "--config", str(config)), read_timeout_seconds=70) as client:
        if HOST.refusal(["pids", "memory_mb"]) is not None:  # the defaults are refused like any limit
            text = await call_error(client, "dispatch_effect", command=py("pass"))
            assert "cannot enforce" in text
            pytest.skip(f"this host cannot enforce the defaults: {text}")
        plain = await call(client, "dispatch_effect", command=py("pass"))
        own = await call(client, "dispatch_effect", command=py("pass"), limits={"pids": 64})
        flow = await call(
            client,
            "dispatch_flow",
            steps=[
                {"id": "small", "command": py(WAIT_FOR, str(tmp_path / "go")), "limits": {"memory_mb": 64}},
                {"id": "after", "command": py("pass"), "needs": ["small"]},
            ],
            background=True,
        )
        small = flow["steps"][0]["effect_id"]
        await read_until(client, small, "ready")
        stored = limit_file(small, "memory_mb").read_text().strip()
        (tmp_path / "go").touch()
        result = await client.call_tool("poll_flow", {"flow_id": flow["flow_id"]})
        with anyio.fail_after(20):
            while structured(result)["status"] == "running":
                await anyio.sleep(0.05)
                result = await client.call_tool("poll_flow", {"flow_id": flow["flow_id"]})
        steps = {
            s["step_id"]: await call(client, "poll_effect", effect_id=s["effect_id"])
            for s in structured(result)["steps"]
        }
    assert plain["status"] == own["status"] == "succeeded"
    assert plain["limits"] == {"memory_mb": 256, "pids": 50}
    assert own["limits"] == {"memory_mb": 256, "pids": 64}
    assert steps["small"]["limits"] == {"memory_mb": 64, "pids": 50} and stored in ("67108864",)
    assert steps["after"]["limits"] == {"memory_mb": 256, "pids": 50}
    assert [s["status"] for s in steps.values()] == ["succeeded", "succeeded"]


async def test_a_limit_the_host_cannot_enforce_is_a_tool_error_naming_the_missing_controller(
    settings: Settings, tmp_path: Path
) -> None:
    proc = tmp_path / "proc"  # a host with cgroup v2 containment only: no controller reaches the effects
    proc.mkdir()
    (proc / "cgroup").write_text("0::/\n")
    (proc / "mountinfo").write_text(f"41 31 0:38 / {tmp_path / 'cg2'} rw - cgroup2 cgroup2 rw\n")
    runner = LocalRunner(controllers=Controllers.find(None, proc=proc))
    async with Engine.open(settings, runner=runner) as engine:
        async with Client(build_server(engine), read_timeout_seconds=70) as client:
            text = await call_error(client, "dispatch_effect", command=py("pass"), limits={"memory_mb": 64})
            assert "cannot enforce `memory_mb`" in text and "the memory controller is missing" in text
            step = {"id": "build", "command": py("pass"), "limits": {"pids": 8, "cpu": 1}}
            text = await call_error(client, "dispatch_flow", steps=[step])
            assert "step 'build'" in text and "pids controller is missing" in text and "cpu controller" in text
            assert (await call(client, "dispatch_effect", command=py("pass")))["status"] == "succeeded"
            assert len((await call(client, "list_effects"))["effects"]) == 1


@needs("pids")
async def test_the_limit_cgroups_a_killed_server_left_are_removed_at_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    code = "import os, time; print(f'parent {os.getppid()} ready', flush=True); time.sleep(120)"
    with suppress(Exception, BaseExceptionGroup):
        async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
            record = await call(client, "dispatch_effect", command=py(code), limits={"pids": 8}, background=True)
            server_pid = int((await read_until(client, record["effect_id"], "ready")).split()[1])
            left = limit_file(record["effect_id"], "pids").parent
            assert left.is_dir()
            os.kill(server_pid, signal.SIGKILL)
    assert left.is_dir()  # nothing removed it: the server died
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        ended = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert ended["status"] == "failed" and ended["error"] == "interrupted"
    assert not left.exists(), "the dead server's limit cgroup is still there"
