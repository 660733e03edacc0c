"""Sandboxed effects (bubblewrap) through a real MCP client over real stdio: what they cannot reach, write,
read or leave, what still works as without a sandbox, and a host that cannot make one."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.config.http import HttpSettings
from effectd.config.settings import Settings
from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import Controllers
from tests.helpers.git import make_repo
from tests.helpers.mcp import call, call_error, connected, read_until, wait_until
from tests.helpers.processes import SLEEP, effectd_bin, py, stdio_params

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]

ANY = "--allow-any-command"


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_servers(count: int) -> Iterator[list[int]]:
    """`count` HTTP servers on the host's loopback; their ports."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(count)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield [server.server_address[1] for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def layout(tmp_path: Path) -> tuple[Path, Path]:
    """The journal in a folder of its own, the effect's cwd beside it."""
    (tmp_path / "state").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path / "state" / "j.db", tmp_path / "work"


async def dispatch(client: Client, code: str, *args: str, **arguments: Any) -> dict[str, Any]:
    record: dict[str, Any] = await call(client, "dispatch_effect", command=py(code, *args), wait_s=40, **arguments)
    return record


PROBE_NETWORK = """
import json, os, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).close()
    reached = "connected"
except OSError as exc:
    reached = exc.strerror or repr(exc)
json.dump({"reached": reached}, open(os.environ["EFFECTD_RESULT_FILE"], "w"))
"""


async def test_a_sandboxed_effect_cannot_open_a_loopback_socket_to_a_server_on_the_host(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    with listener:
        async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
            plain = await dispatch(client, PROBE_NETWORK, port, cwd=str(work))
            boxed = await dispatch(client, PROBE_NETWORK, port, cwd=str(work), sandbox=True)
    assert plain["result"] == {"reached": "connected"}  # the same program, unsandboxed, reaches it
    assert boxed["status"] == "succeeded", boxed
    assert boxed["result"] == {"reached": "Connection refused"}
    assert boxed["sandbox"] == {"network": "none", "write": [], "hide": []}
    shown = await anyio.run_process([effectd_bin(), "show", boxed["effect_id"], "--db", str(db)])
    assert json.loads(shown.stdout)["sandbox"] == {"network": "none", "write": [], "hide": []}  # `effectd show`


FILES = """
import json, os, sys
outside, extra, journal = sys.argv[1:4]
seen = {"tmpdir": os.environ["TMPDIR"]}
def attempt(name, path):
    try:
        with open(path, "w") as file:
            file.write("x")
        seen[name] = "written"
    except OSError as exc:
        seen[name] = exc.strerror
attempt("cwd", "in-cwd.txt")
attempt("write_path", os.path.join(extra, "in-write.txt"))
attempt("tmpdir_file", os.path.join(os.environ["TMPDIR"], "scratch.txt"))
attempt("outside", os.path.join(outside, "escaped.txt"))
attempt("home", os.path.expanduser("~/effectd-sandbox-escape.txt"))
try:
    seen["journal"] = open(journal, "rb").read(16).decode("latin-1")
except OSError as exc:
    seen["journal"] = exc.strerror
seen["journal_folder"] = sorted(os.listdir(os.path.dirname(journal)))
seen["result_folder"] = sorted(os.listdir(os.path.dirname(os.environ["EFFECTD_RESULT_FILE"])))
json.dump(seen, open(os.environ["EFFECTD_RESULT_FILE"], "w"))
"""


async def test_a_sandboxed_effect_writes_only_its_cwd_its_write_paths_and_tmpdir_and_cannot_read_the_journal(
    tmp_path: Path,
) -> None:
    db, work = layout(tmp_path)
    outside, extra = tmp_path / "outside", tmp_path / "extra"
    outside.mkdir()
    extra.mkdir()
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        first = await dispatch(client, "print('before')", cwd=str(work))  # its result file is in the output folder
        record = await dispatch(
            client, FILES, str(outside), str(extra), str(db), cwd=str(work), sandbox={"write": [str(extra)]}
        )
    seen = record["result"]
    assert record["status"] == "succeeded", record
    assert seen["cwd"] == seen["write_path"] == seen["tmpdir_file"] == "written"
    assert seen["home"] == "Read-only file system"
    assert seen["outside"] == "No such file or directory"  # under /tmp, which is the sandbox's own
    assert seen["journal"] == "No such file or directory"  # the folder is an empty tmpfs: no journal.db in it
    assert "j.db" not in seen["journal_folder"] and not any(name.startswith("j.db") for name in seen["journal_folder"])
    assert seen["result_folder"] == []  # only its own result goes there: not the other effect's output
    assert first["status"] == "succeeded"
    assert (work / "in-cwd.txt").exists() and (extra / "in-write.txt").exists()
    assert not (outside / "escaped.txt").exists()
    assert seen["tmpdir"] == "/tmp"
    assert record["sandbox"]["write"] == [str(extra)]


ESCAPE = """
import glob, json, os, subprocess, sys, time
daemon = '''
import glob, json, os, sys, time
tried = {}
roots = ["/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"]
for procs in [*roots, *glob.glob("/sys/fs/cgroup/*/cgroup.procs")]:
    try:
        with open(procs, "w") as file:
            file.write(str(os.getpid()))
        tried[procs] = "moved"
    except OSError as exc:
        tried[procs] = exc.strerror
report = {"tried": tried, "cgroup": open("/proc/self/cgroup").read(), "pid": os.getpid()}
with open(sys.argv[1] + ".tmp", "w") as file:
    json.dump(report, file)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
'''
report = os.path.join(os.environ["TMPDIR"], "daemon.json")
subprocess.Popen([sys.executable, "-c", daemon, report], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(1000):
    if os.path.exists(report):
        break
    time.sleep(0.01)
seen = json.load(open(report))
seen["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
json.dump(seen, open(os.environ["EFFECTD_RESULT_FILE"], "w"))
print("daemon", seen["pid"], flush=True)
"""


async def test_a_sandboxed_daemon_cannot_leave_its_cgroup_sees_no_process_outside_and_ends_with_the_effect(
    tmp_path: Path,
) -> None:
    db, work = layout(tmp_path)
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await dispatch(client, ESCAPE, cwd=str(work), sandbox=True)
        listed = await call(client, "list_effects")
    assert record["status"] == "succeeded", (record["error"], record["output_tail"])
    tried = record["result"]["tried"]
    assert tried and all(outcome != "moved" for outcome in tried.values()), tried
    assert "/sys/fs/cgroup/unified/cgroup.procs" in tried
    # Its cgroup namespace is rooted at the effect's own cgroup: it names no cgroup above it.
    assert all(line.endswith(":/") for line in record["result"]["cgroup"].splitlines()), record["result"]["cgroup"]
    # Its own pid namespace: bwrap's init, the effect and its daemon (and `ls`'s /proc read itself).
    assert max(record["result"]["processes"]) < 20, record["result"]["processes"]
    assert listed["effects"][0]["effect_id"] == record["effect_id"]
    # The autouse check fails the test if the daemon (it carries the test session's marker) is left alive.


GRACEFUL = """
import os, signal, sys, time
def stop(signum, frame):
    print("got SIGTERM, cleaning up", flush=True)
    time.sleep(0.2)
    open(sys.argv[1], "w").write("cleaned")
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(600)
"""


async def test_a_cancel_reaches_the_sandboxed_command_with_its_grace_and_leaves_nothing(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    marker = work / "cleaned.txt"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        started = await call(
            client, "dispatch_effect", command=py(GRACEFUL, str(marker)), cwd=str(work), sandbox=True, background=True
        )
        await read_until(client, started["effect_id"], "ready")
        record = await call(client, "cancel_effect", effect_id=started["effect_id"], grace_s=10)
    assert record["status"] == "cancelled"
    assert "got SIGTERM, cleaning up" in record["output_tail"]
    assert marker.read_text() == "cleaned"  # its handler ran to the end: no SIGKILL cut it short
    assert record["exit_code"] == 3


ALLOW = """
import json, os, socket, sys, urllib.request
allowed, other = sys.argv[1:3]
seen = {"proxy": os.environ.get("HTTPS_PROXY")}
for name, port in (("allowed", allowed), ("other", other)):
    try:
        seen[name] = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    except Exception as exc:
        seen[name] = str(exc)
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
        seen[name + "_direct"] = "connected"
    except OSError as exc:
        seen[name + "_direct"] = exc.strerror
proxy = os.environ["HTTP_PROXY"].rsplit(":", 1)[1]
for name, port in (("connect_allowed", allowed), ("connect_other", other)):
    with socket.create_connection(("127.0.0.1", int(proxy)), timeout=10) as conn:
        conn.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n".encode())
        seen[name] = conn.recv(4096).decode().split("\\r\\n")[0]
json.dump(seen, open(os.environ["EFFECTD_RESULT_FILE"], "w"))
"""


async def test_an_allow_list_reaches_exactly_the_named_loopback_port_through_the_proxy(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    with http_servers(2) as (allowed, other):
        async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
            record = await dispatch(
                client,
                ALLOW,
                str(allowed),
                str(other),
                cwd=str(work),
                sandbox={"network": {"allow": [f"127.0.0.1:{allowed}"]}},
            )
    seen = record["result"]
    assert record["status"] == "succeeded", record
    assert seen["proxy"].startswith("http://127.0.0.1:")
    assert seen["allowed"] == f"hello from {allowed}"  # plain HTTP, an absolute URI through the proxy
    assert seen["connect_allowed"] == "HTTP/1.1 200 Connection Established"
    assert "403" in seen["other"] and seen["connect_other"] == "HTTP/1.1 403 Forbidden"
    assert seen["allowed_direct"] == seen["other_direct"] == "Connection refused"  # only through the proxy
    assert record["sandbox"]["network"] == {"allow": [f"127.0.0.1:{allowed}"]}


async def test_the_fake_harness_runs_sandboxed_with_network_to_its_model_only(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    with http_servers(2) as (model, other):
        config = tmp_path / "effectd.toml"
        fake = json.dumps([sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"])
        config.write_text(
            f"[harness.fake]\ncommand = {fake}\nparser = 'claude'\n"
            f"sandbox = {{network = {{allow = ['127.0.0.1:{model}']}}}}\n"
        )
        async with Client(stdio_params(db, ANY, "--config", str(config)), read_timeout_seconds=70) as client:
            arguments: dict[str, Any] = {"harness": "fake", "cwd": str(work), "sandbox": True, "wait_s": 40}
            url = f"http://127.0.0.1:{model}/"
            ok = await call(
                client, "dispatch_effect", prompt="hi", args=["--delay", "0", "--model-url", url], **arguments
            )
            url = f"http://127.0.0.1:{other}/"
            refused = await call(
                client, "dispatch_effect", prompt="hi", args=["--delay", "0", "--model-url", url], **arguments
            )
    assert ok["status"] == "succeeded", ok
    assert f"The model said: hello from {model}" in json.dumps(ok["result"]), ok["result"]
    assert ok["sandbox"]["network"] == {"allow": [f"127.0.0.1:{model}"]}
    assert refused["status"] == "failed"
    assert "403" in refused["error"], refused["error"]


async def test_a_host_without_bubblewrap_refuses_a_sandboxed_dispatch_and_runs_nothing(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    config = tmp_path / "effectd.toml"
    config.write_text(f"[sandbox]\nbwrap = '{tmp_path / 'no-such-bwrap'}'\n")
    marker = work / "ran.txt"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    async with Client(stdio_params(db, ANY, "--config", str(config)), read_timeout_seconds=70) as client:
        error = await call_error(client, "dispatch_effect", command=py(code), cwd=str(work), sandbox=True)
        steps = [{"id": "a", "command": py(code), "cwd": str(work), "sandbox": {"network": "all"}}]
        flow_error = await call_error(client, "dispatch_flow", steps=steps)
        listed = await call(client, "list_effects")
        plain = await dispatch(client, "print('unsandboxed')", cwd=str(work))
    assert "cannot make a sandbox" in error and "apt-get install bubblewrap" in error and "dnf install" in error
    assert "step 'a'" in flow_error and "apt-get install bubblewrap" in flow_error
    assert listed["effects"] == [] and not marker.exists()
    assert plain["status"] == "succeeded"  # an effect without a sandbox still runs


async def test_a_default_sandbox_from_the_config_and_wrong_shapes_refused(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    config = tmp_path / "effectd.toml"
    config.write_text("[sandbox]\ndefault = true\n")
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    with listener:
        async with Client(stdio_params(db, ANY, "--config", str(config)), read_timeout_seconds=70) as client:
            boxed = await dispatch(client, PROBE_NETWORK, port, cwd=str(work))
            plain = await dispatch(client, PROBE_NETWORK, port, cwd=str(work), sandbox=False)
            errors = [
                await call_error(client, "dispatch_effect", command=["true"], sandbox=value)
                for value in ("yes", {"network": "some"}, {"network": {"allow": ["nohost"]}}, {"writ": ["/x"]})
            ]
            relative = await call_error(client, "dispatch_effect", command=["true"], sandbox={"write": ["rel"]})
            inside = await call_error(client, "dispatch_effect", command=["true"], cwd=str(db.parent), sandbox=True)
            listed = await call(client, "list_effects")
    assert boxed["result"] == {"reached": "Connection refused"} and boxed["sandbox"]["network"] == "none"
    assert plain["result"] == {"reached": "connected"} and plain["sandbox"] is None
    for error in errors:
        assert '`sandbox` takes true, false or {"network": "none" | "all" | {"allow": ["HOST:PORT", ...]}' in error
    assert "sandbox.network" in errors[1] and "allow[0] is not HOST:PORT" in errors[2] and "writ" in errors[3]
    assert "not an absolute path" in relative
    assert "the journal's folder" in inside
    assert len(listed["effects"]) == 2


WORKTREE = """
import json, os, sys
open("sandboxed.txt", "w").write("from inside\\n")
seen = {"cwd": os.getcwd(), "siblings": sorted(os.listdir(os.path.dirname(os.getcwd())))}
try:
    seen["token"] = open(sys.argv[1]).read()
except OSError as exc:
    seen["token"] = exc.strerror
json.dump(seen, open(os.environ["EFFECTD_RESULT_FILE"], "w"))
"""


async def test_worktree_isolation_composes_with_the_sandbox_and_the_token_file_is_hidden(
    settings: Settings, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    hidden = replace(settings, http=HttpSettings(token_file=str(token)))
    async with connected(hidden) as (_, client):
        other = await call(
            client, "dispatch_effect", command=py(SLEEP, "30"), cwd=str(repo), isolation="worktree", background=True
        )
        await wait_until(lambda: (settings.worktree_dir / other["effect_id"]).is_dir())
        record = await call(
            client,
            "dispatch_effect",
            command=py(WORKTREE, str(token)),
            cwd=str(repo),
            isolation="worktree",
            sandbox=True,
            wait_s=40,
        )
        await call(client, "cancel_effect", effect_id=other["effect_id"], grace_s=0.5)
    assert record["status"] == "succeeded", (record["error"], record["output_tail"])
    seen = record["result"]
    assert seen["cwd"] == record["workspace"]["path"]  # it ran in its own worktree, writable
    assert seen["siblings"] == [record["effect_id"]]  # the other effect's worktree is not visible
    assert seen["token"] == ""  # the token file reads as empty (an empty file over it)
    assert "sandboxed.txt" in record["workspace"]["changed_files"]  # committed to its branch, as without a sandbox


_v2 = Cgroups.find()
_HOST = Controllers.find(_v2.root if _v2 is not None else None, prepare=False)


@pytest.mark.skipif(_HOST.refusal(["memory_mb"]) is not None, reason="this host cannot enforce a memory limit")
async def test_limits_hold_inside_the_sandbox_and_the_record_shows_both(tmp_path: Path) -> None:
    db, work = layout(tmp_path)
    hog = "chunks = []\nfor _ in range(200):\n    chunks.append(bytearray(1024 * 1024))\nprint('survived')"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await dispatch(client, hog, cwd=str(work), sandbox=True, limits={"memory_mb": 32})
        modest = await dispatch(client, "print('fits')", cwd=str(work), sandbox=True, limits={"memory_mb": 64})
    assert record["status"] == "failed" and record["error"] == "memory limit (32 MiB) exceeded", record
    assert "survived" not in record["output_tail"]
    assert record["limits"] == {"memory_mb": 32} and record["sandbox"]["network"] == "none"
    assert record["peak_memory_mb"] is not None and record["peak_memory_mb"] <= 33
    assert modest["status"] == "succeeded" and "fits" in modest["output_tail"], modest
