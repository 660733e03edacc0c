"""Waiting for effects to end: `await_group`'s modes, with a cursor over the order they ended in.

`all` waits for every effect, `any` for one more completion after the cursor. The race modes wait for
a decision over the whole set, whatever the cursor: `first_success` until one effect succeeded (or
none can any more), `quorum` until `k` succeeded (or that can no longer happen).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import anyio

from effectd.errors import InvalidRequestError
from effectd.model.records import CANCEL_WAIT_S, MAX_WAIT_S, CancelReason, EffectRecord, GroupWait
from effectd.supervisor.effect import Effect

AwaitMode = Literal["all", "any", "first_success", "quorum"]
MODES: tuple[str, ...] = get_args(AwaitMode)
RACE_MODES = frozenset({"first_success", "quorum"})


def check_await_arguments(mode: str, k: int | None, cancel_rest: bool | None) -> None:
    """Refuses a mode, `k` and `cancel_rest` that do not go together (before the set is even read)."""
    if mode not in MODES:
        raise InvalidRequestError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "quorum" and k is None:
        raise InvalidRequestError(
            "mode quorum needs `k`: how many effects must succeed (1 to the number of effects named)"
        )
    if mode != "quorum" and k is not None:
        raise InvalidRequestError(
            f"`k` is only for mode quorum, not {mode!r} (first_success waits for one success); "
            "leave `k` out or use mode quorum"
        )
    if mode not in RACE_MODES and cancel_rest is not None:
        raise InvalidRequestError(
            f"`cancel_rest` is only for modes first_success and quorum, not {mode!r}; mode {mode!r} cancels nothing"
        )


def race_size(mode: AwaitMode, k: int | None, size: int) -> int:
    """How many successes decide the race: `k` for quorum (1 to `size`), 1 otherwise."""
    if mode != "quorum":
        return 1
    assert k is not None
    if not 1 <= k <= size:
        raise InvalidRequestError(
            f"k must be between 1 and {size} (the number of effects named) for mode quorum; got {k}"
        )
    return k


@dataclass(frozen=True)
class Race:
    """Where a race (`first_success`) or a quorum of `k` stands."""

    winners: list[Effect]  # the effects that succeeded, in finishing order, at most k
    satisfied: bool  # k of them succeeded
    decided: bool  # satisfied, or it can no longer be: too few are left to succeed


def race(effects: Sequence[Effect], k: int) -> Race:
    """The state of a race for `k` successes among `effects`."""
    succeeded = sorted((e for e in effects if e.status == "succeeded"), key=lambda e: e.terminal_seq or 0)
    still_open = sum(1 for e in effects if not e.terminal)
    satisfied = len(succeeded) >= k
    return Race(succeeded[:k], satisfied, satisfied or len(succeeded) + still_open < k)


Sync = Callable[[], Awaitable[int]]
Cancel = Callable[[list[Effect], CancelReason, str, float], Awaitable[object]]


def ended_after(effects: Sequence[Effect], cursor: int, seen: float = math.inf) -> list[Effect]:
    """The effects that ended after `cursor` and by `seen`, in the order they ended (their terminal
    event's seq)."""
    done = [e for e in effects if e.terminal and cursor < (e.terminal_seq or 0) <= seen]
    return sorted(done, key=lambda e: e.terminal_seq or 0)


class Completions:
    """Wakes every waiter when any effect ends; each waiter checks its own set."""

    def __init__(self) -> None:
        self._ended = anyio.Event()

    def notify(self) -> None:
        self._ended.set()
        self._ended = anyio.Event()

    async def wait(
        self,
        effects: Sequence[Effect],
        mode: AwaitMode,
        cursor: int,
        within_s: float,
        k: int = 1,
        sync: Sync | None = None,
    ) -> tuple[list[Effect], bool, float]:
        """Waits until all `effects` are terminal (`all`), one ended after `cursor` (`any`), or the race
        for `k` successes is decided (`first_success`, `quorum`). Returns the effects that ended after
        `cursor`, in the order they ended, whether the wait timed out, and the seq seen.

        With other servers on the journal, `sync` applies what they committed and returns the seq up to
        which every event is applied here. Only ends up to that seq count: one of this server's own
        effects that ended at seq 12 waits until seq 11, another server's, has been seen, so a cursor
        returned never passes over a completion not yet reported."""
        seen: float = math.inf
        waiting = list(effects)  # those not both ended and seen: each wake looks at these only

        def settle() -> bool:
            """Drops from `waiting` the effects ended and seen (`seen` only grows); True when one has
            ended past `seen`, committed but not applied here yet."""
            nonlocal waiting
            unseen, still = False, []
            for effect in waiting:
                if effect.terminal:
                    if (effect.terminal_seq or 0) <= seen:
                        continue
                    unseen = True
                still.append(effect)
            waiting = still
            return unseen

        def satisfied() -> bool:
            if mode in RACE_MODES:
                return race(effects, k).decided
            return not waiting or (mode == "any" and bool(ended_after(effects, cursor, seen)))

        with anyio.move_on_after(within_s):
            while True:
                ended = self._ended
                if sync is not None:
                    seen = await sync()
                unseen = settle()
                if satisfied():
                    break
                if unseen:
                    await anyio.sleep(0.005)  # committed already: the next sync takes it in
                    continue
                await ended.wait()
        settle()
        return ended_after(effects, cursor, seen), not satisfied(), seen


async def wait_group(
    completions: Completions,
    effects: Sequence[Effect],
    mode: AwaitMode,
    cursor: int,
    timeout_s: float,
    k: int | None = None,
    cancel_rest: bool | None = None,
    *,
    cancel: Cancel,
    sync: Sync | None = None,
) -> GroupWait:
    """`await_group` over `effects` (arguments checked by `check_await_arguments`), woken by
    `completions`. Once a race mode is satisfied, the others still running or waiting are cancelled
    (reason `superseded`) unless `cancel_rest` is False, through `cancel` (which forwards other
    servers' effects to them), and this returns once their process groups are gone, at most 50 s
    later and within the 55 s every call keeps to; then `done` holds them too. `sync`: see
    `Completions.wait`."""
    started = anyio.current_time()
    need = race_size(mode, k, len(effects))
    _, timed_out, seen = await completions.wait(effects, mode, cursor, timeout_s, need, sync)
    satisfied: bool | None = None
    winners: list[EffectRecord] | None = None
    if mode in RACE_MODES:
        decision = race(effects, need)
        satisfied, winners = decision.satisfied, [e.record() for e in decision.winners]
        losers = [e for e in effects if not e.terminal]
        if decision.satisfied and cancel_rest is not False and losers:
            message = f"await_group {mode}: decided by {', '.join(e.effect_id for e in decision.winners)}"
            within = max(0.5, min(CANCEL_WAIT_S, MAX_WAIT_S - (anyio.current_time() - started)))
            with anyio.CancelScope(shield=True):  # asked for: seen through even if the caller goes away
                await cancel(losers, "superseded", message, within)
            if sync is not None:
                seen = await sync()
    done = ended_after(effects, cursor, seen)
    # An end not yet reported (another server's end this one has yet to see comes before it) leaves
    # the group incomplete, so a caller that stops at `complete` never misses it.
    ended = set(done) | {e for e in effects if e.terminal and (e.terminal_seq or 0) <= cursor}
    return GroupWait(
        done=[e.record() for e in done],
        pending=[e.effect_id for e in effects if not e.terminal],
        complete=all(e in ended for e in effects),
        cursor=max([cursor, *(e.terminal_seq or 0 for e in done)]),
        timed_out=timed_out,
        satisfied=satisfied,
        winners=winners,
    )
