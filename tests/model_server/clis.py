"""The real agent CLIs, installed from npm into a project-local prefix, and how to point them at the server.

``python -m tests.model_server.clis`` installs them (``.ci/run`` does); tests call :func:`require`,
which installs once per session and skips with the reason when npm or the registry is unavailable.
Set ``EFFECTD_REAL_CLIS=0`` to skip the real-CLI tests without trying.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.model_server.server import ModelServer

REPO = Path(__file__).resolve().parents[2]
NODE_PREFIX = Path(os.environ.get("EFFECTD_NODE_PREFIX", REPO / ".ci" / "node"))
"""Where ``npm install --prefix`` puts the CLIs (git-ignored)."""

PACKAGES: dict[str, tuple[str, str]] = {
    "claude": ("@anthropic-ai/claude-code", "2.1.332"),
    "codex": ("@openai/codex", "0.171.0"),
    "pi": ("@mariozechner/pi-coding-agent", "0.73.1"),
    "opencode": ("opencode-ai", "1.18.33"),
    "gemini": ("@google/gemini-cli", "0.61.0"),
}
"""Each covered CLI: its npm package and the version run for real (the newest when this was written)."""

INSTALL_TIMEOUT_S = 900


def bin_dir() -> Path:
    return NODE_PREFIX / "node_modules" / ".bin"


def installed_version(name: str) -> str | None:
    package, _ = PACKAGES[name]
    try:
        meta = json.loads((NODE_PREFIX / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) and (bin_dir() / name).exists() else None


def install(names: tuple[str, ...] = tuple(PACKAGES)) -> dict[str, str]:
    """Installs the missing CLIs; returns, for each one that is not usable, why."""
    wanted = [name for name in names if installed_version(name) != PACKAGES[name][1]]
    if not wanted:
        return {}
    npm = shutil.which("npm")
    if npm is None:
        return {name: "npm is not installed" for name in wanted}
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    specs = [f"{PACKAGES[name][0]}@{PACKAGES[name][1]}" for name in wanted]
    with open(NODE_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel sessions share the prefix)
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", "--loglevel=error", *specs],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return {name: f"npm install {' '.join(specs)} took over {INSTALL_TIMEOUT_S} s" for name in wanted}
    problems: dict[str, str] = {}
    for name in wanted:
        if installed_version(name) != PACKAGES[name][1]:
            detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            problems[name] = f"npm install {PACKAGES[name][0]}@{PACKAGES[name][1]} failed: {detail}"
    return problems


@functools.cache
def _availability(name: str) -> str | None:
    if os.environ.get("EFFECTD_REAL_CLIS") == "0":
        return "EFFECTD_REAL_CLIS=0"
    return install((name,)).get(name)


def require(name: str) -> Path:
    """The installed CLI's executable; skips the test (with the reason) when it cannot be installed."""
    import pytest

    problem = _availability(name)
    if problem is not None:
        pytest.skip(f"real {name} CLI unavailable: {problem}")
    return bin_dir() / name


# --- pointing a CLI at the scripted server (all through the environment) ------------------------


def claude_env(server: ModelServer, config_dir: Path) -> dict[str, str]:
    """Claude Code on the scripted server, with its own config dir (no login, no telemetry)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    return {
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "scripted-key",
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def codex_env(server: ModelServer, codex_home: Path) -> dict[str, str]:
    """Codex on the scripted server: a ``config.toml`` in its own ``CODEX_HOME`` names a provider at the
    server's ``/v1`` (Responses API over HTTP; codex 0.171 ignores ``OPENAI_BASE_URL``)."""
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{server.model}"\n'
        'model_provider = "scripted"\n'
        "check_for_update_on_startup = false\n"
        "[model_providers.scripted]\n"
        'name = "scripted"\n'
        f'base_url = "{server.url}/v1"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'wire_api = "responses"\n'
        "supports_websockets = false\n"
    )
    return {"CODEX_HOME": str(codex_home), "OPENAI_API_KEY": "scripted-key"}


def pi_env(server: ModelServer, agent_dir: Path) -> dict[str, str]:
    """pi on the scripted server: in its own agent dir (``PI_CODING_AGENT_DIR``), ``models.json`` adds a
    provider speaking Anthropic Messages at the server, and ``settings.json`` makes it the default."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    model = {"id": server.model, "cost": {"input": 3, "output": 15, "cacheRead": 0, "cacheWrite": 0}}
    provider = {"baseUrl": server.url, "api": "anthropic-messages", "apiKey": "scripted-key", "models": [model]}
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"scripted": provider}}))
    (agent_dir / "settings.json").write_text(json.dumps({"defaultProvider": "scripted", "defaultModel": server.model}))
    return {"PI_CODING_AGENT_DIR": str(agent_dir), "PI_SKIP_VERSION_CHECK": "1", "PI_OFFLINE": "1"}


def opencode_env(server: ModelServer, home: Path) -> dict[str, str]:
    """opencode on the scripted server: ``OPENCODE_CONFIG_CONTENT`` adds a provider (the bundled
    ``@ai-sdk/anthropic``) at the server's ``/v1`` and makes it the model; XDG dirs of its own; no
    models.dev fetch, no autoupdate, no default plugins (which would be fetched from npm)."""
    home.mkdir(parents=True, exist_ok=True)
    provider = {
        "npm": "@ai-sdk/anthropic",
        "name": "Scripted",
        "options": {"baseURL": f"{server.url}/v1", "apiKey": "scripted-key"},
        "models": {server.model: {"name": "Scripted", "cost": {"input": 3, "output": 15}}},
    }
    config = {
        "model": f"scripted/{server.model}",
        "autoupdate": False,
        "share": "disabled",
        "provider": {"scripted": provider},
    }
    return {
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        **{f"XDG_{kind}_HOME": str(home / kind.lower()) for kind in ("DATA", "CONFIG", "CACHE", "STATE")},
    }


def gemini_env(server: ModelServer, home: Path) -> dict[str, str]:
    """Gemini CLI on the scripted server (``GOOGLE_GEMINI_BASE_URL``, its ``/v1beta`` API), offline.

    ``GEMINI_CLI_HOME`` holds a ``.gemini/settings.json`` that selects API-key auth: with only the
    base URL set, 0.61.0 picks the ``gateway`` auth type, which its headless check then refuses
    ("Invalid auth method selected."). A fixed model skips the router's classifier request;
    usage statistics off stops its telemetry (else it resolves Google hosts). The workspace is
    trusted through the environment (headless runs exit 55 in an untrusted folder); ``TMPDIR``
    keeps its error reports out of /tmp.
    """
    (home / ".gemini").mkdir(parents=True, exist_ok=True)
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "model": {"name": server.model},
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    }
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return {
        "GOOGLE_GEMINI_BASE_URL": server.url,
        "GEMINI_API_KEY": "scripted-key",
        "GEMINI_CLI_HOME": str(home),
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "TMPDIR": str(home),
    }


def main() -> int:
    problems = install()
    for name, (package, version) in PACKAGES.items():
        state = problems.get(name) or f"installed in {NODE_PREFIX}"
        print(f"{package}@{version}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
