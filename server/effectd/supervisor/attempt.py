"""One attempt of an effect: start its process through the runner, watch it, stop it, and say how it ended.

Everything that touches the process goes through the `Runner` and its `ProcessHandle`: start,
output, exit, signals, the group's end, the result file. This module decides when to signal
(a cancel, a timeout, an idle timeout, a harness that printed its final event but does not exit) and
makes sure nothing of the process group is left when the attempt is over.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress

import anyio

from effectd.errors import InvalidRequestError, JournalUnavailableError, NotAllowedError
from effectd.harness.parsers import Parser, make_parser
from effectd.journal.projection import Event
from effectd.model.records import CancelReason, EffectSpec
from effectd.runner.base import ExitStatus, Launch, ProcessHandle, ResultFileError, Runner, SpawnError, Usage
from effectd.runner.sandbox import Sandbox
from effectd.supervisor import events
from effectd.supervisor.effect import Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.output import LineSplitter, monotonic
from effectd.supervisor.pipes import follow_log
from effectd.support.flag import Flag

log = logging.getLogger("effectd")

PROGRESS_EVENT_EVERY_S = 1.0
DRAIN_AFTER_EXIT_S = 1.0
GROUP_GONE_BOUND_S = 3.0
_MAX_LINE_BYTES = 16 * 1024 * 1024

Record = Callable[[Effect, Event], Awaitable[None]]  # journals an event of the effect, then applies it
Render = Callable[[Effect], Awaitable[tuple[list[str], str | None]]]  # a templated step's argv and stdin
RequestCancel = Callable[[Effect, CancelReason], object]
Prepare = Callable[[Effect], Awaitable[str]]  # an isolated effect's worktree: the directory it starts in
# A flow step's outcome without a process of its own (taken from an earlier flow, or its fan-out's), if any
Instead = Callable[[Effect], Awaitable[Outcome | None]]


async def check_sandbox(runner: Runner, spec: EffectSpec) -> None:
    """Refuses a sandboxed effect where the runner cannot make a sandbox (saying what to install): nothing
    is ever run unsandboxed instead. The runner probes once (off the event loop) and keeps the answer."""
    if spec.sandbox is None:
        return
    if (problem := await anyio.to_thread.run_sync(runner.sandbox_problem)) is not None:
        raise NotAllowedError(problem)


def check_limits(runner: Runner, spec: EffectSpec) -> None:
    """Limits (issue 23): a limit the runner cannot enforce where it runs effects is refused at dispatch,
    never dropped (InvalidRequestError naming the missing controller)."""
    if spec.limits and (why := runner.refuse_limits(spec.limits)) is not None:
        raise InvalidRequestError(why)


def _judge_memory(effect: Effect, outcome: Outcome, usage: Usage) -> None:
    """The cgroup's verdict in the outcome: the peak memory, and a failure that the memory limit caused
    (the kernel's OOM killer ended a process of the effect) said as such. An effect that still
    succeeded, or that effectd cancelled, keeps that outcome."""
    outcome.peak_memory_mb = usage.peak_memory_mb
    memory_mb = (effect.spec.limits or {}).get("memory_mb")
    if usage.memory_killed and memory_mb is not None and outcome.status == "failed":
        outcome.error = f"memory limit ({int(memory_mb)} MiB) exceeded"


class Attempts:
    """Runs attempts of effects on a runner; the supervisor decides whether an attempt may begin."""

    def __init__(
        self,
        runner: Runner,
        record: Record,
        request_cancel: RequestCancel,
        *,
        base_env: Mapping[str, str],
        result_path: Callable[[str], str],
        result_grace_s: float,
        result_limit_bytes: int = 1024 * 1024,
    ) -> None:
        self.runner = runner
        self._record = record
        self._request_cancel = request_cancel
        # Effects never inherit the server's EFFECTD_* variables (its token, its configuration): only
        # the per-effect ones set in _launch.
        self._base_env = {name: value for name, value in base_env.items() if not name.startswith("EFFECTD_")}
        self._result_path = result_path
        self._result_grace_s = result_grace_s
        self._result_limit = result_limit_bytes
        self.render: Render | None = None
        self.spent: Callable[[Effect], None] | None = None  # told when a harness reports more spending
        self.prepare: Prepare | None = None
        self.instead: Instead | None = None  # flows: told of every flow step once its needs are met (Driver)
        self.producer: Callable[[str], Awaitable[Effect]] | None = None  # a piped step's producer, by id
        # What no sandboxed effect may see, besides its own `hide` (the engine sets it): the journal's folder,
        # the output folder, the token file, the worktrees' folder (an effect's own worktree is bound back in).
        self.sandbox_hides: tuple[str, ...] = ()
        # `approvals: "ask"` (issue 25): the argv with the sub-agent's permission gate (the engine's Approvals).
        self.gate: Callable[[Effect, list[str], dict[str, str]], Awaitable[list[str]]] | None = None
        # A flow step's `approval: true`: waits for its start to be answered; (allowed, the answer's message).
        self.ask_start: Callable[[Effect], Awaitable[tuple[bool, str]]] | None = None

    async def run(self, effect: Effect) -> Outcome:
        """Runs the effect's next attempt to its end; returns how it ended (its process group is gone)."""
        attempt = effect.attempt + 1
        try:
            cwd = effect.spec.cwd
            if effect.spec.isolation == "worktree" and self.prepare is not None:
                try:
                    cwd = await self.prepare(effect)
                except Exception as exc:
                    raise RuntimeError(f"could not make the effect's git worktree: {exc}") from exc
                if effect.cancel is not None:  # cancelled while its worktree was made: it never starts
                    if effect.cancel.skip is not None:
                        return Outcome("skipped", error=effect.cancel.skip)
                    return Outcome("cancelled", cancel=effect.cancel)
            launch = await self._launch(effect, cwd)
        except Exception as exc:  # a template that cannot be filled, a worktree that cannot be made
            return Outcome("failed", error=str(exc), attempt=attempt)
        effect.output.reopen()
        effect.final_event_seen = False
        try:
            handle = await self.runner.start(launch)
        except SpawnError as exc:
            return Outcome("failed", error=str(exc), attempt=attempt)
        try:
            started = events.started(
                effect,
                pid=handle.pid,
                pid_start=handle.start_marker,
                command=list(launch.argv),
                attempt=attempt,
                node=handle.node,
            )
            effect.check_transition("running")
            await self._record(effect, started)
            effect.output.last_output = monotonic()
            outcome = await self._watch(effect, handle)
            outcome.attempt = attempt
            _judge_memory(effect, outcome, handle.usage())  # before close: closing removes the cgroup that tells
            return outcome
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap(effect, handle)
                handle.close()

    async def _launch(self, effect: Effect, cwd: str | None) -> Launch:
        spec = effect.spec
        argv, stdin = list(spec.command), spec.stdin
        if spec.templated and self.render is not None:
            argv, stdin = await self.render(effect)
        if spec.kind == "harness" and spec.prompt_via == "stdin":
            stdin = spec.prompt if stdin is None else stdin
        result_file = self._result_path(effect.effect_id)
        env = {**self._base_env, **spec.env}
        env.update(EFFECTD_EFFECT_ID=effect.effect_id, EFFECTD_RUN_ID=effect.run_id, EFFECTD_RESULT_FILE=result_file)
        source = None
        if spec.pipe_from is not None and self.producer is not None:
            source, stdin = follow_log(await self.producer(spec.pipe_from)), None
        data = stdin.encode() if stdin is not None else None
        if spec.approvals == "ask":
            if self.gate is None:
                raise RuntimeError('this server gives no permission gate, so `approvals: "ask"` cannot run')
            argv = await self.gate(effect, argv, env)
        return Launch(
            argv,
            env,
            cwd,
            data,
            result_file,
            effect.effect_id,
            self._result_limit,
            stdin_source=source,
            resources=spec.resources,
            limits=spec.limits,  # limits (issue 23)
            sandbox=self._sandbox(effect),
        )

    def _sandbox(self, effect: Effect) -> Sandbox | None:
        """The effect's sandbox as the runner takes it: its own `write` and `hide`, and the server's hidden paths."""
        asked = effect.spec.sandbox
        if asked is None:
            return None
        network = asked.network
        allow = tuple(network["allow"]) if isinstance(network, dict) else ()
        return Sandbox(
            network="allow" if isinstance(network, dict) else network,
            allow=allow,
            write=tuple(asked.write),
            hide=(*asked.hide, *self.sandbox_hides),
        )

    async def _watch(self, effect: Effect, handle: ProcessHandle) -> Outcome:
        spec = effect.spec
        parser = make_parser(spec.parser) if spec.parser else None
        exited: ExitStatus | None = None
        stop, parser_done, output_done = Flag(), Flag(), Flag()

        async def on_exit() -> None:
            nonlocal exited
            exited = await handle.wait()
            stop.set()

        async def on_cancel() -> None:
            await effect.cancel_event.wait()
            stop.set()
            cancel = effect.cancel
            if cancel is not None and exited is None:  # journaled, so a crash during the grace keeps the why
                await self._record(effect, events.cancel_requested(effect, cancel))

        async def on_timeout(seconds: float) -> None:
            await anyio.sleep(seconds)
            self._request_cancel(effect, "timeout")

        async def on_idle(seconds: float) -> None:
            while True:
                quiet = monotonic() - effect.output.last_output
                if quiet >= seconds:
                    self._request_cancel(effect, "idle_timeout")
                    return
                await anyio.sleep(seconds - quiet)

        async def on_result() -> None:
            await parser_done.wait()
            await anyio.sleep(self._result_grace_s)
            stop.set()  # the harness printed its final event but did not exit: reap it, keep its result

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, effect, handle, parser, parser_done, output_done)
            if spec.pipe_from is not None:
                tg.start_soon(handle.feed_stdin)  # a piped step's stdin
            tg.start_soon(on_exit)
            tg.start_soon(on_cancel)
            if spec.timeout_s is not None:
                tg.start_soon(on_timeout, spec.timeout_s)
            if spec.idle_timeout_s is not None:
                tg.start_soon(on_idle, spec.idle_timeout_s)
            if parser is not None:
                tg.start_soon(on_result)
            await stop.wait()
            cancelled = False
            status: ExitStatus | None = exited
            if status is None:
                status = await self._terminate(handle, effect)
                cancelled = effect.cancel is not None
            elif not await handle.wait_group_gone(0):
                # Leftovers of the group (a daemonised grandchild) do not outlive the effect.
                await self._terminate(handle, effect)
            with anyio.move_on_after(DRAIN_AFTER_EXIT_S):
                await output_done.wait()
            tg.cancel_scope.cancel()
        assert status is not None
        if cancelled:
            return Outcome("cancelled", status.exit_code, status.signal, cancel=effect.cancel)
        return self._outcome(status, parser, *await self._result(handle))

    async def _result(self, handle: ProcessHandle) -> tuple[object, str | None]:
        """The result file's value, or None and why a file that was there was not read."""
        try:
            return await handle.read_result(), None
        except ResultFileError as exc:
            return None, str(exc)

    async def _terminate(self, handle: ProcessHandle, effect: Effect) -> ExitStatus:
        """SIGTERM to the whole group, SIGKILL to what is left of it after the effect's grace (which a
        later cancel may shorten: `Effect.grace`); returns the leader's exit status. The grace is for
        the group, not only the leader: a grandchild that ignores SIGTERM is killed when the grace ends,
        not a second grace later."""
        handle.signal_group(signal.SIGTERM)
        grace = effect.grace_s
        gone = False
        with anyio.CancelScope(deadline=anyio.current_time() + grace) as effect.grace:
            gone = await handle.wait_group_gone(grace)
        effect.grace = None
        if not gone:
            handle.signal_group(signal.SIGKILL)
            await handle.wait_group_gone(GROUP_GONE_BOUND_S)
        with anyio.move_on_after(GROUP_GONE_BOUND_S):
            return await handle.wait()
        return ExitStatus(None, signal.SIGKILL)

    async def _reap(self, effect: Effect, handle: ProcessHandle) -> None:
        """Makes sure nothing of the effect's process group is left, whatever happened above."""
        if not await handle.wait_group_gone(0):
            handle.signal_group(signal.SIGKILL)
            if not await handle.wait_group_gone(GROUP_GONE_BOUND_S):
                log.warning("effect %s: processes of group %s still alive after SIGKILL", effect.effect_id, handle.pid)

    async def _pump(
        self,
        effect: Effect,
        handle: ProcessHandle,
        parser: Parser | None,
        parser_done: Flag,
        output_done: Flag,
    ) -> None:
        lines_of = LineSplitter(_MAX_LINE_BYTES)
        last_event = 0.0
        try:
            while chunk := await handle.read():
                effect.output.write(chunk)
                if parser is None:
                    effect.notify()
                    continue
                changed = False
                spending = parser.spending()
                for line in lines_of.feed(chunk):
                    changed = parser.feed(line.decode("utf-8", "replace")) or changed
                effect.final_event_seen = parser.finished
                if changed or parser.spending() != spending:
                    effect.live_progress = parser.report()  # progress, and the spending so far
                    if self.spent is not None:
                        self.spent(effect)
                    now = time.monotonic()
                    if now - last_event >= PROGRESS_EVENT_EVERY_S:
                        last_event = now
                        with suppress(JournalUnavailableError):  # best effort: the end carries the latest
                            await self._record(effect, events.progress(effect, effect.live_progress))
                if parser.finished:
                    parser_done.set()
                effect.notify()
            if parser is not None and (rest := lines_of.rest()):
                parser.feed(rest.decode("utf-8", "replace"))
                effect.live_progress = parser.report()
        finally:
            output_done.set()

    def _outcome(self, exited: ExitStatus, parser: Parser | None, result: object, result_error: str | None) -> Outcome:
        outcome = self._outcome_of(exited, parser, result)
        outcome.result_error = result_error
        return outcome

    def _outcome_of(self, exited: ExitStatus, parser: Parser | None, result: object) -> Outcome:
        if exited.error is not None:  # the runner lost the process (its node died): nothing else is known
            return Outcome("failed", exited.exit_code, exited.signal, error=exited.error, result=result)
        if parser is not None:
            harness = parser.outcome(exited.exit_code)
            if harness.result is not None:
                result = harness.result if result is None else {**harness.result, "file": result}
            if harness.error is not None:
                return Outcome("failed", exited.exit_code, exited.signal, error=harness.error, result=result)
            if parser.finished:
                return Outcome("succeeded", exited.exit_code, exited.signal, result=result)
        if exited.signal is not None:
            error = f"killed by signal {exited.signal}"
            with suppress(ValueError):
                error += f" ({signal.Signals(exited.signal).name})"
            return Outcome("failed", None, exited.signal, error=error, result=result)
        if exited.exit_code == 0:
            return Outcome("succeeded", 0, result=result)
        return Outcome("failed", exited.exit_code, error=f"exited with code {exited.exit_code}", result=result)
