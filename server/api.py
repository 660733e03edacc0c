"""The Python API: run flows and effects from program code, on an open Engine or from a plain script.

    from effectd.api import run

    record = run(
        [
            {"id": "fetch", "command": ["curl", "-s", "https://example.com"]},
            {"id": "count", "needs": ["fetch"], "command": ["wc", "-c"], "stdin": "{{steps.fetch.output}}"},
        ],
        db="work.db",
        allow_commands=["curl", "wc"],
    )
    print(record.status, record.wall_s)

Inside async code that holds an Engine (`async with Engine.open(settings) as engine`), use
`run_flow(engine, steps)`, `run_effect(engine, command=[...])` and `await_effect(engine, effect_id)`.
An awaited effect that did not succeed raises EffectCancelledError or EffectFailedError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from effectd.config import build_settings, load_file
from effectd.engine import Engine
from effectd.errors import EffectCancelledError, EffectFailedError
from effectd.flows import EffectArguments, FlowRecord, Policy, Step
from effectd.models import EffectRecord
from effectd.specs import build_spec
from effectd.supervisor import Effect

__all__ = [
    "EffectCancelledError",
    "EffectFailedError",
    "FlowRecord",
    "Step",
    "await_effect",
    "run",
    "run_effect",
    "run_flow",
]

StepLike = Step | Mapping[str, Any]


def _steps(steps: Sequence[StepLike]) -> list[Step]:
    return [step if isinstance(step, Step) else Step.model_validate(step) for step in steps]


async def run_flow(
    engine: Engine,
    steps: Sequence[StepLike],
    *,
    policy: Policy = "fail_fast",
    max_concurrency: int | None = None,
    flow_id: str | None = None,
    run_id: str | None = None,
) -> FlowRecord:
    """Runs a flow on the engine and returns its record once it has ended.

    Steps are `Step` objects or dicts with the same fields (as dispatch_flow takes them); bad
    steps raise pydantic's ValidationError or InvalidRequestError before anything runs. Cancelling
    the caller cancels the flow's unfinished steps (reason `client_cancelled`).
    """
    flow, new = await engine.flows.submit(
        _steps(steps), policy=policy, max_concurrency=max_concurrency, flow_id=flow_id, run_id=run_id
    )
    try:
        await engine.flows.wait(flow)
    except anyio.get_cancelled_exc_class():
        if new:
            engine.flows.cancel(flow, "client_cancelled", "the awaiting program was cancelled")
        raise
    return await engine.flows.record(flow)


def run(
    steps: Sequence[StepLike],
    *,
    db: str | Path | None = None,
    config: str | Path | None = None,
    allow_commands: Sequence[str] = (),
    allow_any_command: bool = False,
    policy: Policy = "fail_fast",
    max_concurrency: int | None = None,
    flow_id: str | None = None,
    run_id: str | None = None,
) -> FlowRecord:
    """Runs a flow from synchronous code: opens an engine on `db`, runs the flow to its end, closes the engine.

    Settings come as for `effectd serve`: `config` (else $EFFECTD_CONFIG, else ./effectd.toml), the
    database `db` (else $EFFECTD_DB, else ./.effectd/journal.db), and the commands allowed. Returns
    the flow record; check its `status`. A live server that owns the same database is refused
    (DatabaseBusyError): give the script its own database.
    """
    settings = build_settings(
        load_file(Path(config) if config is not None else None),
        db=Path(db) if db is not None else None,
        allow_commands=allow_commands,
        allow_any_command=allow_any_command,
    )
    checked = _steps(steps)

    async def main() -> FlowRecord:
        async with Engine.open(settings) as engine:
            return await run_flow(
                engine, checked, policy=policy, max_concurrency=max_concurrency, flow_id=flow_id, run_id=run_id
            )

    return anyio.run(main)


def _outcome(effect: Effect) -> EffectRecord:
    record = effect.record()
    if record.status == "succeeded":
        return record
    if record.status == "cancelled":
        raise EffectCancelledError(record)
    raise EffectFailedError(record)


async def await_effect(engine: Engine, effect_id: str, *, timeout_s: float | None = None) -> EffectRecord:
    """Waits for an effect to end; returns its record when it succeeded.

    Raises EffectCancelledError (with `cancel_reason` and `cancel_message`) when it was cancelled,
    EffectFailedError (with `record`) when it failed or was skipped, TimeoutError when `timeout_s`
    passed first (the effect keeps running), UnknownEffectError for an unknown id.
    """
    effect = await engine.supervisor.get(effect_id)
    with anyio.fail_after(timeout_s):
        await effect.done.wait()
    return _outcome(effect)


async def run_effect(
    engine: Engine,
    *,
    run_id: str | None = None,
    group: str | None = None,
    depends_on: Sequence[str] = (),
    **arguments: Any,
) -> EffectRecord:
    """Dispatches one effect (dispatch_effect's arguments as keywords) and waits for it like `await_effect`.

    Cancelling the caller cancels the effect (reason `client_cancelled`), unless its `key` named an
    effect that already existed.
    """
    request = EffectArguments.model_validate(arguments).request()
    spec = build_spec(engine.settings, request | {"group": group, "depends_on": list(depends_on)})
    effect, new = await engine.supervisor.dispatch(spec, run_id)
    try:
        await effect.done.wait()
    except anyio.get_cancelled_exc_class():
        if new:
            engine.supervisor.request_cancel(effect, "client_cancelled", "the awaiting program was cancelled")
        raise
    return _outcome(effect)
