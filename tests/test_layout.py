"""The code keeps the shape the architecture promises: small modules, SQL only in the journal, and
nothing above the runner touching processes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "server").rglob("*.py"), *(REPO / "tools").glob("*.py")])
SOURCES = [p for p in SOURCES if "server/tools" not in p.as_posix()]  # the symlink to tools/
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b", re.I)


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_holds_more_than_600_lines_nor_a_class_more_than_300() -> None:
    assert len(SOURCES) > 30
    too_long = {relative(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 600}
    assert not too_long, f"modules over 600 lines: {too_long}"
    big = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (size := node.end_lineno - node.lineno + 1) > 300:  # type: ignore[operator]
                big[f"{relative(path)}:{node.name}"] = size
    assert not big, f"classes over 300 lines: {big}"


def test_sql_lives_only_in_the_journal_package() -> None:
    offenders = {}
    for path in SOURCES:
        if relative(path).startswith("server/journal/"):
            continue
        text = path.read_text()
        uses = {"sqlite3", "aiosqlite"} & imported(ast.parse(text))
        statements = SQL.findall(text)
        if uses or statements:
            offenders[relative(path)] = sorted(uses) + statements[:3]
    assert not offenders, f"SQL outside server/journal/: {offenders}"


def test_only_the_runner_touches_processes() -> None:
    """Above the runner nothing signals, reads /proc or starts a process: a remote runner must fit."""
    offenders = {}
    for path in SOURCES:
        name = relative(path)
        if name.startswith("server/runner/") or name.startswith("server/cli/") or name == "server/harness/fake.py":
            continue  # the runner; the command line and the fake harness are programs of their own
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        found = sorted({"subprocess"} & imported(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
                if node.attr in ("kill", "killpg", "waitpid", "pidfd_open", "fork"):
                    found.append(f"os.{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if "/proc/" in node.value:
                    found.append("/proc/")
        if found:
            offenders[name] = found
    assert not offenders, f"process handling above the runner: {offenders}"
