"""What the tests share, by topic: each module here is imported by tests of several tiers.

Fixtures stay in the conftest files (``tests/conftest.py`` for every tier, ``tests/e2e/conftest.py``
for the HTTP daemon, ``tests/e2e/browser/conftest.py`` for the browser); everything a test calls
directly lives here, so no test module imports another.

- ``paths``: the repository, the tests and their fixture files.
- ``mcp``: calling tools through a client, and waiting on what they report, always with a bound.
- ``processes``: child programs (``py``), the ``effectd`` program, pids and the leftover check.
- ``http``: an in-process HTTP server on a free port, the official HTTP client, a real daemon.
- ``browser``: a headless chromium page on the dashboard (skipped without Playwright or chromium).
- ``git``: throwaway repositories for isolation tests.
- ``programs``: the demo, the client examples and the fake harness run as programs.
- ``disks``: a small tmpfs, for a full disk done for real.
- ``fakes``: ``FakeRunner``, processes in memory; ``clock``: a clock the test moves.
- ``tasks_client``: a raw client of the MCP tasks extension.
"""
