"""effectd's tests, in tiers that mirror what they test.

- ``unit/``: the engine's parts below MCP, on ``tests.helpers.fakes.FakeRunner`` (processes in memory),
  recorded streams and pure functions: parsers, profiles, the supervisor, the journal's projection.
- ``process/``: real processes (``[sys.executable, "-c", ...]`` children, the ``effectd`` program, git,
  Ray), with short graces passed as parameters: containment, limits, files, faults, the command line.
- ``e2e/``: through a real MCP client, in memory, over stdio and HTTP; ``e2e/browser/`` drives the
  dashboard in headless chromium; ``e2e/examples/`` runs the demo and the client examples as programs.
- ``real/`` (marker ``real``): the real agent CLIs and the npm clients, against ``tests/model_server``.
- ``project/``: the repository's shape (layout, packaging).

``pytest -n auto`` runs everything but the ``real`` and ``slow`` markers; ``.ci/run`` runs those too.
Helpers are in ``tests/helpers/``, fixtures in the conftest files; no test module imports another.
"""
