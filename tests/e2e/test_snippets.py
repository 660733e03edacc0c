"""Every fenced code block of README.md and docs/**/*.md runs as written, or says why it does not.

- `python` blocks run as programs (this Python, `effectd` from its venv on PATH), in a scratch directory;
- `toml` blocks parse and load through effectd's configuration loader;
- `json` blocks parse;
- `text` (output) and `mermaid` (diagram) blocks are for the reader, and are not run;
- any other block needs a marker on the line before it:
  `<!-- snippet: run -->` (bash, in a scratch directory), `<!-- snippet: real (why) -->` (run only in the
  real tier, `-m real`, with the npm clients on PATH), or `<!-- snippet: skip (why) -->`.

A block with no language, or a shell block with no marker, fails `test_every_block_runs_or_says_why_not`:
nothing escapes silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NODE = REPO / "tests" / "node"
NODE_BIN = NODE / "node_modules" / ".bin"
PINNED_CLAUDE = REPO / ".ci" / "node" / "node_modules" / ".bin" / "claude"

FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
MARKER = re.compile(r"^<!--\s*snippet:\s*(?P<kind>\w+)\s*(?:\((?P<why>[^)]*)\))?\s*-->\s*$")
CHECKED = {"python", "toml", "json"}  # run or parsed without a marker
SHOWN = {"text", "mermaid"}  # output and diagrams for the reader
SHELL = {"sh", "bash", "console"}
# What a real block's output must say, by what it runs: a command that exits 0 is not enough.
EXPECT = {"claude mcp get": "Connected", "--tool-name dispatch_effect": "hello"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    kind: str | None  # the marker's kind: run, real, skip, or None
    why: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before.strip())
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        found.append(
            Block(
                page,
                i + 1,
                opened["lang"],
                marker["kind"] if marker else None,
                (marker["why"] or "").strip() if marker else "",
                "\n".join(lines[i + 1 : end]) + "\n",
            )
        )
        i = end + 1
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def problem(block: Block) -> str | None:
    if not block.lang:
        return "a block with no language: say what it is (python, toml, json, sh, text)"
    if block.kind not in (None, "run", "real", "skip"):
        return f"unknown snippet marker {block.kind!r}: use run, real (why) or skip (why)"
    if block.kind in ("real", "skip") and not block.why:
        return f"`snippet: {block.kind}` needs its reason in parentheses"
    if block.lang in SHOWN:
        return "a text block is output and is never run: drop its marker" if block.kind else None
    if block.lang in CHECKED:
        return None
    if block.lang in SHELL:
        return None if block.kind else "a shell block needs `<!-- snippet: run -->`, `real (why)` or `skip (why)`"
    return None if block.kind == "skip" else f"a {block.lang} block that nothing runs: mark it `snippet: skip (why)`"


def test_every_block_runs_or_says_why_not() -> None:
    assert len(PAGES) > 20 and len(ALL) > 30, "the pages and their blocks were found"
    problems = [f"{block.where}: {why}" for block in ALL if (why := problem(block))]
    assert not problems, "\n".join(problems)


def test_the_readme_stays_short_and_inside_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)", text):
        if not re.match(r"https?://", target):
            assert (REPO / target).exists(), f"README.md links to {target}, which the repository lacks"
    assert "../shared" not in text and "PEERS.md" not in text


def fast(block: Block) -> bool:
    return block.kind != "real" and (block.lang in CHECKED or block.kind == "run")


def env_for(scratch: Path, *, real: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if real:
        path.insert(0, str(NODE_BIN))
    env.update(PATH=os.pathsep.join(path), HOME=str(scratch / "home"))
    env.pop("EFFECTD_DB", None)
    env.pop("EFFECTD_CONFIG", None)
    (scratch / "home").mkdir(exist_ok=True)
    return env


def run_python(block: Block, scratch: Path) -> None:
    program = scratch / "snippet.py"
    program.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(program)], cwd=scratch, env=env_for(scratch), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"


def load_toml(block: Block, scratch: Path) -> None:
    from effectd.config.settings import build_settings, load_file

    assert tomllib.loads(block.code) is not None
    path = scratch / "effectd.toml"
    path.write_text(block.code)
    settings = build_settings(load_file(path), db=scratch / "journal.db")
    assert settings.db == scratch / "journal.db"


def run_shell(block: Block, scratch: Path, env: dict[str, str], timeout_s: float) -> str:
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", block.code],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.parametrize("block", [b for b in ALL if fast(b)], ids=lambda b: b.where)
def test_the_snippet_runs(block: Block, tmp_path: Path) -> None:
    if block.kind == "skip":
        pytest.skip(block.why)
    if block.lang == "python":
        run_python(block, tmp_path)
    elif block.lang == "toml":
        load_toml(block, tmp_path)
    elif block.lang == "json":
        json.loads(block.code)
    else:
        run_shell(block, tmp_path, env_for(tmp_path), timeout_s=30)


def copy_of_the_repository(to: Path) -> Path:
    """The repository's files as a fresh clone has them (no venv, no node_modules), for install commands."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, to / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return to


def claude() -> str | None:
    pinned = str(PINNED_CLAUDE) if PINNED_CLAUDE.exists() else None
    return os.environ.get("EFFECTD_CLAUDE") or pinned or shutil.which("claude")


@pytest.mark.real
@pytest.mark.parametrize("block", [b for b in ALL if b.kind == "real"], ids=lambda b: b.where)
def test_the_real_snippet_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Install commands run in a copy of the repository; the others in a scratch directory whose `.venv`
    is this venv, with the npm clients of tests/node (`cd tests/node && npm install`) on PATH.

    They install packages and start npm programs, so they run only when the real tier is asked for
    (`-m real`, or `EFFECTD_REAL_SNIPPETS=1`), never in the fast command."""
    asked = re.sub(r"\bnot\s+real\b", "", request.config.getoption("markexpr") or "")
    if not re.search(r"\breal\b", asked) and os.environ.get("EFFECTD_REAL_SNIPPETS") != "1":
        pytest.skip("the real tier: run with -m real (or EFFECTD_REAL_SNIPPETS=1)")
    if "/path/to/effectd" in block.code:
        install_as_a_tool(block, copy_of_the_repository(tmp_path / "clone"), tmp_path)
        return
    if "python3 -m venv .venv" in block.code:
        scratch = copy_of_the_repository(tmp_path / "clone")
    else:
        scratch = tmp_path
        (scratch / ".venv").symlink_to(Path(sys.executable).parent.parent)
        if "npx " in block.code:
            if not (NODE_BIN / "inspector").exists():
                pytest.skip("the MCP Inspector is not installed: cd tests/node && npm install")
            shutil.copy(NODE / "package.json", scratch / "package.json")
            (scratch / "node_modules").symlink_to(NODE / "node_modules")
    env = env_for(scratch, real=True)
    if "claude " in block.code:
        found = claude()
        if found is None:
            pytest.skip("Claude Code is not installed: python -m tests.model_server.clis, or set EFFECTD_CLAUDE")
        (scratch / "bin").mkdir(exist_ok=True)
        (scratch / "bin" / "claude").symlink_to(found)
        env["PATH"] = f"{scratch / 'bin'}{os.pathsep}{env['PATH']}"
    out = run_shell(block, scratch, env, timeout_s=600)
    for what, said in EXPECT.items():
        if what in block.code:
            assert said in out, f"{block.where}: expected {said!r} in its output:\n{out}"


def install_as_a_tool(block: Block, clone: Path, tmp_path: Path) -> None:
    """Each line is one way to install (`uv tool install`, `pipx install`): each runs in a home of its own,
    from a clean copy of the repository, and must leave a working `~/.local/bin/effectd`."""
    for n, line in enumerate(filter(None, (line.strip() for line in block.code.splitlines()))):
        program = line.split()[0]
        if shutil.which(program, path=env_for(tmp_path)["PATH"]) is None:
            pytest.skip(f"{program} is not installed (pip install {program})")
        home = tmp_path / f"installs-{n}"
        home.mkdir()
        env = env_for(home)
        env.update(UV_TOOL_DIR=str(home / "uv-tools"), PIPX_HOME=str(home / "pipx"))
        single = Block(
            block.page, block.line, block.lang, block.kind, block.why, line.replace("/path/to/effectd", str(clone))
        )
        run_shell(single, home, env, timeout_s=600)
        version = subprocess.run(
            [str(home / "home" / ".local" / "bin" / "effectd"), "--version"], capture_output=True, text=True, timeout=60
        )
        assert version.returncode == 0 and version.stdout.startswith("effectd "), f"{line}: {version}"


def test_the_readme_lists_every_tool_the_server_serves_once() -> None:
    """The README's one line per tool is the live tool list: a new tool, or a renamed one, shows there."""
    from effectd.tools.surface import all_tools

    served = sorted(tool.name for tool in all_tools())
    rows = re.findall(r"^\| `(\w+)` \|", (REPO / "README.md").read_text(), re.M)
    assert sorted(rows) == served
