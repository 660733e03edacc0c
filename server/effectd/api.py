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

from effectd.config.settings import build_settings, load_file
from effectd.engine.core import Engine
from effectd.errors import EffectCancelledError, EffectFailedError
from effectd.flows.models import FlowRecord, FlowRequest, Policy, Step
from effectd.model.arguments import EffectRequest
from effectd.model.records import EffectRecord

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
    resume: str | None = None,
) -> FlowRecord:
    """Runs a flow on the engine and returns its record once it has ended. `resume`: the id of an
    earlier flow whose unchanged succeeded steps are taken instead of run (as dispatch_flow's `resume`).

    Steps are `Step` objects or dicts with the same fields (as dispatch_flow takes them); bad
    steps raise pydantic's ValidationError or InvalidRequestError before anything runs. Cancelling
    the caller cancels the flow's unfinished steps (reason `client_cancelled`).
    """
    dispatched = await engine.dispatch_flow(
        FlowRequest(
            steps=_steps(steps),
            policy=policy,
            max_concurrency=max_concurrency,
            flow_id=flow_id,
            run_id=run_id,
            resume=resume,
        )
    )
    return await engine.follow_flow(dispatched.record.flow_id, None, cancel_on_abandon=dispatched.new)


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


def _outcome(record: EffectRecord) -> EffectRecord:
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
    with anyio.fail_after(timeout_s):
        record = await engine.follow(effect_id, None)
    return _outcome(record)


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
    request = EffectRequest.model_validate(
        {**arguments, "run_id": run_id, "group": group, "depends_on": list(depends_on) or None}
    )
    dispatched = await engine.dispatch(request)
    return _outcome(await engine.follow(dispatched.record.effect_id, None, cancel_on_abandon=dispatched.new))
