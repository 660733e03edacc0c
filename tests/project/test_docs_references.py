"""Every test the README, CONTRIBUTING.md and the docs name exists: a guarantee on the reliability page
points at a test that runs, not at one that was renamed or moved away."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers.paths import REPO

# `test_x.py`, `browser/test_x.py`, `tests/e2e/test_x.py`, each optionally `::test_name` (a name ending
# in `_` is an abbreviation of the test's full name).
REFERENCE = re.compile(r"((?:[\w.]+/)*test_\w+\.py)(?:\[[^\]]*\])?(?:::(\w+))?")


def pages() -> list[Path]:
    return [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").rglob("*.md"))]


def defined_tests() -> dict[Path, set[str]]:
    found = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        found[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return found


def test_every_test_the_docs_name_exists() -> None:
    tests = defined_tests()
    missing = []
    count = 0
    for page in pages():
        for match in REFERENCE.finditer(page.read_text()):
            count += 1
            where, name = match.group(1), match.group(2)
            files = [path for path in tests if path.as_posix().endswith("/" + where)]
            if not files:
                missing.append(f"{page.relative_to(REPO)}: no test file {where}")
            elif name and not any(
                name in tests[f] or (name.endswith("_") and any(t.startswith(name) for t in tests[f])) for f in files
            ):
                missing.append(f"{page.relative_to(REPO)}: {where} defines no {name}")
    assert count > 50, "the docs name the tests that prove what they say"
    assert not missing, "\n".join(missing)
