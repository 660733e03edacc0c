"""The code keeps the shape the architecture promises (docs/design/architecture.md): a module's folder
is its import path, the top level holds what it is meant to, the layers depend one way with no import
cycle, modules stay small, SQL lives only in the journal and processes only behind the runner."""

from __future__ import annotations

import ast
import importlib.util
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from tests.helpers.paths import REPO

# The two portions of the namespace package `effectd` (PEP 420): the engine, and the MCP tool surface.
ROOTS = (REPO / "server", REPO / "tools")
SOURCES = sorted(path for root in ROOTS for path in (root / "effectd").rglob("*.py"))
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b", re.I)

# What the repository's top level may hold, and what the engine's package may hold at its own top:
# three modules (the Python API, the composition root, the errors) beside named layers.
TOP_LEVEL = {
    ".ci", ".git", ".gitignore", "CHANGELOG.md", "CONTRIBUTING.md", "README.md", "benchmarks",
    "client_examples", "docs", "mkdocs.yml", "pyproject.toml", "server", "tests", "tools",
}  # fmt: skip
LOCAL_ONLY = {".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "site", ".effectd"}
ENGINE_TOP = {"api.py", "app.py", "errors.py", "py.typed"}
LAYERS = {
    "cli", "config", "dashboard", "demo", "engine", "flows", "harness", "http", "journal", "model", "peers",
    "protocol", "runner", "supervisor", "support",
}  # fmt: skip

# Who may import whom, by layer: the storage and process layers know nothing of MCP, of the engine
# above them or of the front-ends; the engine knows no front-end; tools reach the engine, not below it.
FRONT_ENDS = ("effectd.app", "effectd.tools", "effectd.protocol", "effectd.http", "effectd.cli", "effectd.demo")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "effectd.support": ("mcp", "effectd.model", "effectd.config", "effectd.engine", "effectd.journal", *FRONT_ENDS),
    "effectd.model": ("mcp", "effectd.engine", "effectd.supervisor", "effectd.journal", "effectd.runner", *FRONT_ENDS),
    "effectd.journal": ("mcp", "effectd.engine", "effectd.supervisor", "effectd.runner", "effectd.flows", *FRONT_ENDS),
    "effectd.runner": ("mcp", "effectd.engine", "effectd.supervisor", "effectd.journal", "effectd.flows", *FRONT_ENDS),
    "effectd.harness": ("mcp", "effectd.engine", "effectd.supervisor", "effectd.journal", *FRONT_ENDS),
    "effectd.supervisor": ("mcp", "effectd.engine", "effectd.flows", *FRONT_ENDS),
    # Flows run on the supervisor beside the engine's other services (a flow's budget is its group's).
    "effectd.flows": ("mcp", "effectd.engine.core", "effectd.engine.queries", "effectd.engine.follow", *FRONT_ENDS),
    "effectd.peers": ("mcp", "effectd.engine", *FRONT_ENDS),
    "effectd.engine": ("mcp", *FRONT_ENDS),
    "effectd.tools": ("effectd.journal", "effectd.runner", "effectd.supervisor", "sqlite3", "aiosqlite"),
}


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path: Path) -> str:
    root = next(root for root in ROOTS if path.is_relative_to(root))
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def imported_at_import_time(tree: ast.Module) -> set[str]:
    """What a module imports while it is being imported: not inside functions, not under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.If | ast.With | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    visit(tree.body)
    return found


def test_the_top_level_holds_the_layout_the_project_was_asked_for() -> None:
    present = {path.name for path in REPO.iterdir()} - LOCAL_ONLY
    assert present - TOP_LEVEL == set(), f"unexpected at the top level: {sorted(present - TOP_LEVEL)}"
    assert {"server", "tools", "tests", "docs", "README.md", "pyproject.toml"} <= present
    assert {path.name for path in (REPO / "server").iterdir()} == {"effectd"}
    assert {path.name for path in (REPO / "tools").iterdir()} == {"effectd"}
    assert {path.name for path in (REPO / "tools" / "effectd").iterdir()} == {"tools"}


def test_every_import_path_is_its_folder_with_no_rename_and_no_symlink() -> None:
    links = [relative(p) for root in ROOTS for p in root.rglob("*") if p.is_symlink()]
    assert not links, f"symlinks in the source roots: {links}"
    # `effectd` is a namespace package with two portions: neither holds an `effectd/__init__.py`.
    assert not any((root / "effectd" / "__init__.py").exists() for root in ROOTS)
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["sources"] == ["server", "tools"], "the wheel strips the source roots, and renames nothing"
    assert set(wheel["dev-mode-dirs"]) == {"server", "tools"}
    for path in SOURCES:
        name = module_name(path)
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve() == path.resolve(), f"{name} imports from {spec.origin}, not {path}"


def test_the_engine_package_names_its_layers_at_its_top() -> None:
    top = {path.name for path in (REPO / "server" / "effectd").iterdir() if path.name != "__pycache__"}
    modules = {name for name in top if "." in name}
    assert modules == ENGINE_TOP, f"modules at the top of server/effectd/: {sorted(modules - ENGINE_TOP)}"
    assert top - ENGINE_TOP == LAYERS
    for layer in LAYERS:
        init = REPO / "server" / "effectd" / layer / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{layer}/__init__.py says what the layer is"


def test_package_inits_hold_only_their_docstring_so_importing_one_module_imports_no_other() -> None:
    """A re-exporting `__init__` runs whenever any module of its package is imported: that is how
    `from effectd.supervisor import events` inside `supervisor.core` made a runtime import cycle."""
    for path in SOURCES:
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{relative(path)} holds more than a docstring"


def every_import(tree: ast.Module) -> set[str]:
    """Everything a module imports, wherever: at import time, under TYPE_CHECKING, inside functions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return found


def assert_no_cycle(imports_of: Callable[[ast.Module], set[str]]) -> None:
    """Fails naming the first cycle among effectd's modules, by what `imports_of` says each imports."""
    modules = {module_name(path): path for path in SOURCES}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in imports_of(ast.parse(path.read_text())):
            parts = target.split(".")
            deps |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & modules.keys()
        graph[name] = deps - {name}
    done: set[str] = set()

    def walk(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        if node in done:
            return
        for dep in sorted(graph[node]):
            walk(dep, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        walk(name, [])


def test_no_runtime_import_cycle() -> None:
    assert_no_cycle(imported_at_import_time)


def test_no_import_cycle_even_for_types_or_inside_functions() -> None:
    """A part that imports its owner's type (under TYPE_CHECKING) or its owner's module (inside a
    function, to dodge the cycle) still holds its owner: it takes narrow dependencies instead."""
    assert_no_cycle(every_import)


# Below the front-ends, arguments are typed: a request object or named parameters, never `**kwargs: Any`
# relayed by hand (the front-ends map a tool's or a flag's arguments onto them).
TYPED_LAYERS = ("config", "engine", "flows", "harness", "journal", "model", "peers", "runner", "supervisor", "support")


def test_the_engine_and_the_layers_below_it_take_no_untyped_keyword_arguments() -> None:
    offenders = []
    for path in SOURCES:
        if module_name(path).split(".")[1] not in TYPED_LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.args.kwarg is not None:
                annotation = node.args.kwarg.annotation
                if annotation is None or ast.unparse(annotation) == "Any":
                    offenders.append(f"{relative(path)}:{node.lineno} {node.name}(**{node.args.kwarg.arg})")
    assert not offenders, "\n".join(offenders)


def test_layers_depend_one_way() -> None:
    offenders = []
    for path in SOURCES:
        name = module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                for target in imported(ast.parse(path.read_text())):
                    if any(target == f or target.startswith(f + ".") for f in forbidden):
                        offenders.append(f"{relative(path)} imports {target}")
    assert not offenders, "\n".join(offenders)


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
        if relative(path).startswith("server/effectd/journal/"):
            continue
        text = path.read_text()
        uses = {"sqlite3", "aiosqlite"} & imported(ast.parse(text))
        statements = SQL.findall(text)
        if uses or statements:
            offenders[relative(path)] = sorted(uses) + statements[:3]
    assert not offenders, f"SQL outside server/effectd/journal/: {offenders}"


def test_only_the_runner_touches_processes() -> None:
    """Above the runner nothing signals, reads /proc or starts a process: a remote runner must fit."""
    programs = ("server/effectd/runner/", "server/effectd/cli/", "server/effectd/demo/")
    offenders = {}
    for path in SOURCES:
        name = relative(path)
        if name.startswith(programs) or name == "server/effectd/harness/fake.py":
            continue  # the runner; the command line, the demo and the fake harness are programs of their own
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


def test_the_architecture_diagram_draws_exactly_the_imports_between_layers() -> None:
    """docs/design/architecture.md's mermaid diagram is the code's: every arrow is an import that
    exists, and every import from one layer into another is drawn (arrows into the layers most use,
    `model`, `config`, `errors` and `support`, may be left out)."""
    page = (REPO / "docs" / "design" / "architecture.md").read_text()
    found = re.search(r"```mermaid\n(.*?)```", page, re.S)
    assert found, "the architecture page has its diagram"
    drawn = set()
    for line in found.group(1).splitlines():
        arrow = re.match(r'\s*(\w+)\s+--(?:\s+"[^"]*"\s+--)?>\s+(.+)$', line)
        if arrow:
            drawn |= {(arrow.group(1), target.strip()) for target in arrow.group(2).split("&")}
    assert drawn

    def layer(module: str) -> str:
        return module.split(".")[1].removesuffix(".py")

    imports = set()
    for path in SOURCES:
        source = layer(module_name(path) + ".x")
        for target in imported(ast.parse(path.read_text())):
            if target.startswith("effectd.") and layer(target) != source:
                imports.add((source, layer(target)))
    assert drawn - imports == set(), "arrows in the diagram that no import makes"
    undrawn = {edge for edge in imports - drawn if edge[1] not in {"model", "config", "errors", "support"}}
    assert undrawn == set(), "imports between layers the diagram does not draw"
