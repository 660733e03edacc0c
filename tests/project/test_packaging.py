"""Installed, effectd is the one import package `effectd`, and everything it imports is declared.

The slow tests build real environments: a clean `pip install <repo>` and an editable
`pip install -e <repo>`, each into a fresh venv (one per module, with the dependencies from the
package index), and then import effectd from a directory that holds its own `server/` and
`tools/` packages, the way a user's project would.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.paths import REPO

SERVER = REPO / "server"
TOOLS = REPO / "tools"
API_NAMES = "run, run_flow, run_effect, await_effect, EffectCancelledError, EffectFailedError"
INSTALL_TIMEOUT_S = 600
# pip's messages when it cannot reach a package index (then the install tests skip, they do not fail).
OFFLINE_SIGNS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ProxyError",
    "Could not fetch URL",
    "No matching distribution found for hatchling",  # the build backend itself: no index answered
)

# Imported by effectd but not declared in [project] dependencies; each is a defect to fix (declare the
# distribution or stop importing it), listed here so that any other undeclared import fails now.
# Remove an entry once it is declared: the test fails while a stale entry remains.
KNOWN_UNDECLARED: dict[str, str] = {}


# --- the imports of the effectd package -----------------------------------------------------------


@dataclass(frozen=True)
class Import:
    module: str  # the top-level name: `x` of `import x.y` and of `from x.y import z`
    where: str  # path:line
    guarded: bool  # inside `try: ... except ImportError` or `if TYPE_CHECKING:`


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {kind.id if isinstance(kind, ast.Name) else getattr(kind, "attr", None) for kind in kinds}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in(source: str, name: str) -> list[Import]:
    """The absolute imports in `source`, each with whether it is guarded."""
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name.split(".")[0], f"{name}:{node.lineno}", guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(node.module.split(".")[0], f"{name}:{node.lineno}", guarded))
        if isinstance(node, ast.Try | ast.TryStar):
            body_guarded = guarded or any(_catches_import_error(handler) for handler in node.handlers)
            for child in node.body:
                visit(child, body_guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, guarded)

    visit(ast.parse(source, name), False)
    return found


def effectd_sources() -> dict[Path, str]:
    """Every .py file of the package: its two portions, server/effectd/ and tools/effectd/."""
    files: set[Path] = set()
    for root in (SERVER / "effectd", TOOLS / "effectd"):
        for folder, _, names in os.walk(root):
            files.update((Path(folder) / name).resolve() for name in names if name.endswith(".py"))
    return {path: path.read_text(encoding="utf-8") for path in sorted(files)}


def third_party_imports() -> list[Import]:
    found = []
    for path, source in effectd_sources().items():
        for imported in imports_in(source, str(path.relative_to(REPO))):
            if imported.module not in sys.stdlib_module_names and imported.module != "effectd":
                found.append(imported)
    return found


def declared() -> tuple[set[str], set[str]]:
    """The canonical names of the required distributions and of those only in optional extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {canonicalize_name(Requirement(text).name) for text in project.get("dependencies", [])}
    optional = {
        canonicalize_name(Requirement(text).name)
        for extra in project.get("optional-dependencies", {}).values()
        for text in extra
    }
    return required, optional - required


def undeclared(imports: list[Import], required: set[str], optional: set[str]) -> dict[str, list[str]]:
    """Per module: why its imports are not allowed (not declared, only an optional extra unguarded, unknown)."""
    owners = packages_distributions()
    problems: dict[str, list[str]] = {}
    for imported in imports:
        distributions = {canonicalize_name(dist) for dist in owners.get(imported.module, [])}
        if not distributions and canonicalize_name(imported.module) in optional:
            distributions = {canonicalize_name(imported.module)}  # an optional extra not installed here (ray)
        if not distributions:
            why = f"{imported.where}: no installed distribution provides {imported.module!r}"
        elif distributions & required:
            continue
        elif distributions & optional:
            if imported.guarded:
                continue
            why = f"{imported.where}: {sorted(distributions)} is only an optional extra, imported unguarded"
        else:
            why = f"{imported.where}: {sorted(distributions)} is not in [project] dependencies"
        problems.setdefault(imported.module, []).append(why)
    return problems


def test_every_third_party_module_effectd_imports_is_a_declared_dependency() -> None:
    imports = third_party_imports()
    assert {i.module for i in imports} >= {"anyio", "mcp", "pydantic", "aiosqlite", "starlette", "uvicorn"}
    problems = undeclared(imports, *declared())
    unexpected = {module: why for module, why in problems.items() if module not in KNOWN_UNDECLARED}
    assert not unexpected, "effectd imports distributions it does not declare:\n" + json.dumps(unexpected, indent=2)
    stale = sorted(set(KNOWN_UNDECLARED) - set(problems))
    assert not stale, f"now declared or no longer imported: remove {stale} from KNOWN_UNDECLARED"


def test_the_dependency_check_flags_starlette_and_uvicorn_when_they_are_not_declared() -> None:
    """The defect this check was written for: server/effectd/http/ imported both without declaring them."""
    required, optional = declared()
    problems = undeclared(third_party_imports(), required - {"starlette", "uvicorn"}, optional)
    assert {"starlette", "uvicorn"} <= set(problems)
    assert any("effectd/http" in why for why in problems["starlette"])


def test_a_module_of_an_optional_extra_is_allowed_only_behind_a_guarded_import() -> None:
    guarded = "try:\n    import ray\nexcept ImportError:\n    ray = None\n"
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ray import ObjectRef\n"
    unguarded = "import ray\ntry:\n    pass\nexcept ImportError:\n    import ray.util\n"
    caught_elsewhere = "try:\n    import ray\nexcept ValueError:\n    pass\n"
    assert [i.guarded for i in imports_in(guarded, "g")] == [True]
    assert [i.guarded for i in imports_in(typing_only, "t")] == [False, True]
    assert [i.guarded for i in imports_in(unguarded, "u")] == [False, False]
    assert [i.guarded for i in imports_in(caught_elsewhere, "c")] == [False]
    # Checked against any installed distribution standing in for an optional extra (here: pytest).
    stand_in = [Import("pytest", "x.py:1", True), Import("pytest", "x.py:2", False)]
    problems = undeclared(stand_in, set(), {"pytest"})
    assert problems == {"pytest": ["x.py:2: ['pytest'] is only an optional extra, imported unguarded"]}
    assert undeclared(stand_in, set(), set())["pytest"][0].endswith("is not in [project] dependencies")
    assert imports_in("from . import relative\nfrom .x import y\n", "r") == []


# --- real installs into fresh venvs ---------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would let a venv see other packages."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_USER")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


def start(argv: list[str | Path], cwd: Path) -> subprocess.Popen[str]:
    """Starts `argv` in its own process group, so that all of it can be killed."""
    return subprocess.Popen(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Waits for `proc`; kills its whole group if it outlives `timeout_s` (or this wait is interrupted)."""
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} took over {timeout_s:.0f} s\n{out}\n{err}")
    finally:
        stop(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def checked(argv: list[str | Path], cwd: Path, timeout_s: float = 120) -> str:
    done = finish(start(argv, cwd), timeout_s)
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Venv:
    root: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.root / "bin" / name


@dataclass
class Venvs:
    installed: Venv  # pip install <repo>
    editable: Venv  # pip install -e <repo>
    repository_files: set[str]  # the package files of the repository for the whole build


def package_files() -> set[str]:
    """The files of the repository's two portions of `effectd` as they are named inside the installed package."""
    found = set()
    for base, prefix in ((SERVER / "effectd", ""), (TOOLS / "effectd", "")):
        for folder, dirs, names in os.walk(base):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not (Path(folder) / d).is_symlink()]
            for name in names:
                if not name.endswith(".pyc"):
                    found.add(prefix + str((Path(folder) / name).relative_to(base)))
    return found


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Venvs:
    """Two fresh venvs (made without pip, so they see nothing but what is installed into them), one with
    `pip install <repo>` (a wheel built from the repository), one with `pip install -e <repo>`; both
    installs run at once, dependencies included."""
    plans = {"installed": [str(REPO)], "editable": ["-e", str(REPO)]}
    before = package_files()
    began = time.monotonic()
    running: dict[str, tuple[Path, subprocess.Popen[str]]] = {}
    try:
        for name, args in plans.items():
            where = tmp_path_factory.mktemp(name) / "venv"
            checked([sys.executable, "-m", "venv", "--without-pip", where], where.parent)
            pip = [sys.executable, "-m", "pip", "--python", where / "bin" / "python", "install", "--no-compile"]
            running[name] = where, start([*pip, "--disable-pip-version-check", *args], where.parent)
        made: dict[str, Venv] = {}
        for name, (where, proc) in running.items():
            done = finish(proc, began + INSTALL_TIMEOUT_S - time.monotonic())
            output = done.stdout + done.stderr
            if done.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
                pytest.skip(f"pip could not reach a package index for effectd's dependencies:\n{output[-2000:]}")
            assert done.returncode == 0, f"pip install {' '.join(plans[name])} exited {done.returncode}\n{output}"
            python = where / "bin" / "python"
            site = checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where.parent)
            made[name] = Venv(where, Path(site.strip()))
    finally:
        for _, proc in running.values():
            stop(proc)
    print(f"\ntwo fresh venvs with effectd installed (at once): {time.monotonic() - began:.1f} s")
    return Venvs(made["installed"], made["editable"], before & package_files())


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user's project with its own `server` and `tools` packages, which must never be imported as effectd's."""
    for name in ("server", "tools"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user project {name}/ was imported')\n")
    return tmp_path


# Imports effectd as a user would, from the user's project, and prints what was loaded from where.
IMPORT_EFFECTD = f"""
import importlib, json, pkgutil, sys
from effectd.api import {API_NAMES}
import effectd, effectd.tools, effectd.api
if sys.argv[1] == "all":
    for module in pkgutil.walk_packages(effectd.__path__, "effectd."):
        if not module.name.endswith(".__main__"):  # importing one runs the program
            importlib.import_module(module.name)
print(json.dumps({{
    "effectd": list(effectd.__path__),  # a namespace package (PEP 420): its portions
    "tools": effectd.tools.__file__,
    "api": effectd.api.__file__,
    "shadowed": sorted(name for name in sys.modules if name.split(".")[0] in ("server", "tools")),
}}))
"""
# From a directory with nothing in it: which of these top-level names the environment itself provides.
TOP_LEVEL = (
    "import importlib.util, json, sys; print(json.dumps({n: bool(importlib.util.find_spec(n)) for n in sys.argv[1:]}))"
)


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_a_clean_install_puts_exactly_one_import_package_effectd_with_its_data(venvs: Venvs) -> None:
    venv = venvs.installed
    (dist_info,) = venv.site_packages.glob("effectd-*.dist-info")
    record = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines() if line]
    top_level = {entry.split("/")[0] for entry in record} - {dist_info.name, ".."}  # "..": the console scripts
    assert top_level == {"effectd"}, f"effectd's wheel installs {sorted(top_level)}"
    assert not (venv.site_packages / "server").exists() and not (venv.site_packages / "tools").exists()
    package = venv.site_packages / "effectd"
    assert (package / "py.typed").is_file()
    assert (package / "tools").is_dir() and not (package / "tools").is_symlink()
    assert (package / "tools" / "__init__.py").is_file()
    assert (package / "dashboard" / "index.html").is_file()
    installed_files = {str(path.relative_to(package)) for path in package.rglob("*") if path.is_file()}
    missing = sorted(venvs.repository_files - installed_files)
    assert not missing, f"files of server/ or tools/ missing from the installed package: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_a_clean_install_imports_the_api_beside_a_users_own_server_and_tools(
    venvs: Venvs, user_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    venv = venvs.installed
    loaded = json.loads(checked([venv.python, "-c", IMPORT_EFFECTD, "all"], user_project))
    package = (venv.site_packages / "effectd").resolve()
    assert [Path(p).resolve() for p in loaded["effectd"]] == [package]
    assert Path(loaded["tools"]).resolve() == package / "tools" / "__init__.py"
    assert Path(loaded["api"]).resolve() == package / "api.py"
    assert loaded["shadowed"] == []
    empty = tmp_path_factory.mktemp("empty")
    provided = json.loads(checked([venv.python, "-c", TOP_LEVEL, "server", "tools", "effectd", "pytest"], empty))
    # No top-level server or tools; and pytest (in the test environment) is not visible: the venv is isolated.
    assert provided == {"server": False, "tools": False, "effectd": True, "pytest": False}


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_the_installed_console_scripts_start(venvs: Venvs, user_project: Path) -> None:
    venv = venvs.installed
    usage = checked([venv.script("effectd"), "--help"], user_project)
    assert "serve" in usage
    checked([venv.script("effectd-fake-harness"), "--help"], user_project)


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_an_editable_install_imports_effectd_from_the_repository_beside_a_users_own_server_and_tools(
    venvs: Venvs, user_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    editable = venvs.editable
    loaded = json.loads(checked([editable.python, "-c", IMPORT_EFFECTD, "some"], user_project))
    # Each module from the folder its import path names: server/effectd/api.py, tools/effectd/tools/.
    assert {Path(p).resolve() for p in loaded["effectd"]} == {SERVER / "effectd", TOOLS / "effectd"}
    assert Path(loaded["tools"]).resolve() == TOOLS / "effectd" / "tools" / "__init__.py"
    assert Path(loaded["api"]).resolve() == SERVER / "effectd" / "api.py"
    assert loaded["shadowed"] == []
    empty = tmp_path_factory.mktemp("empty")
    provided = json.loads(checked([editable.python, "-c", TOP_LEVEL, "server", "tools", "effectd"], empty))
    assert provided == {"server": False, "tools": False, "effectd": True}
