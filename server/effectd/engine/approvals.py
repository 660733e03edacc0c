"""Approvals (issue 25): a harness sub-agent dispatched with `approvals: "ask"` asks before it acts.

The sub-agent's CLI gets a permission gate (`effectd.protocol.gate`, an MCP server named in an
`--mcp-config` file written for the effect), which forwards each request over this server's Unix
socket. Here a request becomes an approval: the effect's `approval_rules` decide it at once (first
match wins), else it waits, `pending`, for `answer_approval` (an orchestrator, the dashboard, the
command line) until the effect's `approval_timeout_s` denies it (`timed_out`). The sub-agent has the
answer as soon as it is journaled.

Every approval is journaled once when asked (`APPROVAL_REQUESTED`) and once when answered
(`APPROVAL_ANSWERED`); `load` reads them back at start, and closes, denied, those a stopped server
left unanswered (their sub-agent died with it: nobody waits for the answer), as `settle` does when this
server takes over one that died. The approvals of other live servers on the journal are listed here
too (`seen`), and answered through the server whose sub-agent waits (`forward`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from effectd.engine.gate_socket import GateSocket
from effectd.errors import EffectdError, InvalidRequestError, UnknownEffectError
from effectd.harness.gate import MODULE, PROMPT_TOOL, SERVER
from effectd.journal.approvals import ANSWERED, REQUESTED, approval_events, fold
from effectd.journal.projection import Event
from effectd.model.records import Approval, GroupWait, new_id, now_iso, seconds_between
from effectd.model.specs import APPROVAL_TIMEOUT_S
from effectd.supervisor.completions import ended_after
from effectd.supervisor.core import Supervisor
from effectd.supervisor.effect import Effect

log = logging.getLogger("effectd")

DECIDERS = ("rule", "client", "dashboard", "cli", "timeout")
START = "start"  # the tool of a flow step's start gate (`approval: true`)


class Approvals:
    """This server's approvals: the gate's socket, the pending requests, and every approval of the journal."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._all: dict[str, dict[str, Any]] = {}  # approval_id -> the approval, oldest first
        self._answers: dict[str, anyio.Event] = {}  # pending here: set once answered
        self._gates = GateSocket(self._from_gate)  # the sub-agents' gates reach this server by it
        self._seqs: dict[str, int] = {}  # approval_id -> the seq of its APPROVAL_REQUESTED (await_group's cursor)
        self._asked = anyio.Event()  # set (and replaced) at every request that waits: await_group wakes
        # Set by the engine: answers an approval of another server's effect through that server, and returns
        # it answered (`effectd.peers.sessions.Sessions.forward_approval`).
        self.forward: Callable[[Effect, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        # Set by the engine: whether a live server runs the effects of an owner (`Sessions.runs_alive`).
        self.owner_alive: Callable[[str | None], Awaitable[bool]] | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._gates.running():
            yield

    async def load(self) -> None:
        """Reads every approval back from the journal (run with every waiting effect loaded, none started),
        and settles those a stopped server left pending (`settle`)."""
        for approval_id, (seq, approval) in fold(await approval_events(self._supervisor.journal)).items():
            self._all[approval_id] = approval
            self._seqs[approval_id] = seq
        await self.settle()

    async def settle(self) -> None:
        """Denies each pending request that a server that is gone left (at start, or once this server took
        it over): the sub-agent asking died with that server, so nobody waits for the answer. A flow step's
        start stays pending: its step asks it again (`ask_start`). A live peer's are its own."""
        owners = self._supervisor.owners
        for approval in [a for a in self.pending() if a["approval_id"] not in self._answers]:
            effect = await self._effect(approval["effect_id"])
            ended = effect is not None and effect.terminal and (owners is None or effect.state.owner in owners)
            if effect is None or ended or (effect.local and approval["tool"] != START):
                why = "effectd stopped before it was answered; the sub-agent asking ended with it"
                await self._answer(effect, approval, "denied", None, why)

    def seen(self, event: Event) -> None:
        """An approval event another server journaled (`effectd.peers.sessions` follows them): its approvals
        are listed here too, and a request wakes `await_group` as this server's own do. Applying one twice
        (this server's own, read back) changes nothing."""
        data = event.data
        if event.type == REQUESTED and data["approval_id"] not in self._all:
            self._all[data["approval_id"]] = dict(data)
            self._seqs[data["approval_id"]] = event.seq or 0
            if data["status"] == "pending":
                self._asked.set()
                self._asked = anyio.Event()
        elif event.type == ANSWERED and (approval := self._all.get(data["approval_id"])) is not None:
            if approval["status"] == "pending":
                approval.update(data)
        effect = self._supervisor.registry.peek(event.effect_id or "")
        if effect is not None and not effect.local and not effect.terminal:
            waiting_for = self.peer_waiting_for(effect.effect_id)
            if effect.waiting_for != waiting_for:
                effect.waiting_for = waiting_for
                effect.notify()

    def peer_waiting_for(self, effect_id: str) -> str | None:
        """Another server's effect's `waiting_for`, as its approvals in the journal say: "approval" while one
        is pending (`Supervisor.peer_waiting_for`)."""
        return "approval" if any(a["effect_id"] == effect_id for a in self.pending()) else None

    # --- the sub-agent's side ---------------------------------------------------------------------

    async def wire(self, effect: Effect, argv: list[str], env: dict[str, str]) -> list[str]:
        """The harness's argv with its permission gate (Claude Code's `--permission-prompt-tool` and an
        `--mcp-config` file, written now, that starts the gate with this effect's token)."""
        socket_path, token = await self._gates.path(), self._gates.token(effect.effect_id)
        path = self._supervisor.output_dir / f"{effect.effect_id}.gate.json"
        write_gate_config(path, socket_path, token, effect.effect_id)
        return [*argv, "--permission-prompt-tool", PROMPT_TOOL, "--mcp-config", str(path)]

    async def _from_gate(self, request: dict[str, Any]) -> dict[str, Any]:
        """A request from an effect's gate (its token checked): the answer, in Claude Code's form."""
        effect = await self._effect(str(request["effect_id"]))
        if effect is None or effect.terminal:
            return {"behavior": "deny", "message": "the effect has ended"}
        tool, tool_input = str(request.get("tool", "")), request.get("input")
        approval = await self.ask(effect, tool, tool_input if isinstance(tool_input, dict) else {})
        if approval["status"] == "allowed":
            return {"behavior": "allow", "updatedInput": approval.get("updated_input") or approval["input"]}
        return {"behavior": "deny", "message": approval["message"] or f"{tool} was {approval['status']}"}

    async def ask(self, effect: Effect, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
        """One request: decided by a rule, or pending until answered, the effect ends, or its timeout."""
        approval = await self._request(effect, tool, tool_input)
        return await self._decide(effect, approval)

    async def ask_start(self, effect: Effect) -> tuple[bool, str]:
        """A flow step's start gate (`approval: true`): whether its start is allowed, and the answer's message.

        A request a stopped server left pending is asked again, not anew: the orchestrator's answer to
        the approval it already listed still counts (and its timeout runs from when it was first asked).
        """
        approval = next((a for a in self.pending() if a["effect_id"] == effect.effect_id and a["tool"] == START), None)
        if approval is None:
            approval = await self._request(
                effect,
                START,
                {"flow_id": effect.spec.flow_id, "step_id": effect.spec.step_id, "command": list(effect.spec.command)},
            )
        approval = await self._decide(effect, approval)
        allowed = approval["status"] == "allowed"
        return allowed, approval["message"] or f"step {effect.spec.step_id} was {approval['status']}"

    async def _request(self, effect: Effect, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
        approval = new_approval(effect, tool, tool_input)
        (stamped,) = await self._supervisor.journal.append(
            Event(REQUESTED, effect.run_id, effect.effect_id, dict(approval))
        )
        self._supervisor.apply(effect, stamped)
        self._all[approval["approval_id"]] = approval
        self._seqs[approval["approval_id"]] = stamped.seq or 0
        return approval

    async def _decide(self, effect: Effect, approval: dict[str, Any]) -> dict[str, Any]:
        """Decides a pending approval by the first rule that matches, else waits for its answer.

        Unanswered, it is denied at the effect's `approval_timeout_s` (`timed_out`), or when the effect
        ends or is cancelled first. A server that stops leaves it pending (nobody decided it): the next
        start asks a step's start again, and denies a sub-agent's request (the sub-agent died with this
        server).
        """
        approval_id, tool = approval["approval_id"], approval["tool"]
        rule = _first_match(effect.spec.approval_rules or [], tool, approval["input"])
        if rule is not None:
            status = "allowed" if rule["decision"] == "allow" else "denied"
            await self._answer(effect, approval, status, "rule", None if status == "allowed" else _rule_says(rule))
            return approval
        timeout = effect.spec.approval_timeout_s or APPROVAL_TIMEOUT_S
        left = timeout - max(0.0, seconds_between(approval["requested_at"], now_iso()) or 0.0)
        answered = self._answers[approval_id] = anyio.Event()
        effect.waiting_for = "approval"
        effect.notify()
        self._asked.set()
        self._asked = anyio.Event()
        timed_out = False
        try:
            with anyio.move_on_after(left) as waited:
                async with anyio.create_task_group() as tg:

                    async def ended() -> None:
                        await effect.done.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(ended)
                    await answered.wait()
                    tg.cancel_scope.cancel()
            timed_out = waited.cancelled_caught
        finally:
            with anyio.CancelScope(shield=True):
                if approval["status"] == "pending":
                    if timed_out:
                        message = f"no answer within approval_timeout_s ({timeout:g} s)"
                        await self._answer(effect, approval, "timed_out", "timeout", message)
                    elif effect.terminal or effect.cancel is not None:
                        await self._answer(effect, approval, "denied", None, "the effect ended before an answer")
                self._answers.pop(approval_id, None)
                if not any(self._all[waiting]["effect_id"] == effect.effect_id for waiting in self._answers):
                    effect.waiting_for = None
                    effect.notify()
        return approval

    # --- the orchestrator's side ------------------------------------------------------------------

    def asked_after(self, effect_ids: set[str], cursor: int) -> list[dict[str, Any]]:
        """The pending approvals of these effects asked after `cursor` (a journal seq), oldest first."""
        return [
            dict(approval, seq=self._seqs.get(approval["approval_id"], 0))
            for approval in self.pending()
            if approval["effect_id"] in effect_ids and self._seqs.get(approval["approval_id"], 0) > cursor
        ]

    async def wait_asked(self, effect_ids: set[str], cursor: int) -> None:
        """Returns once one of these effects has a pending approval asked after `cursor`."""
        while not self.asked_after(effect_ids, cursor):
            await self._asked.wait()

    def pending(self) -> list[dict[str, Any]]:
        return [approval for approval in self._all.values() if approval["status"] == "pending"]

    async def answerable(self) -> list[dict[str, Any]]:
        """The pending approvals an answer given here reaches, oldest first: those a sub-agent or a flow step
        waits for on this server, and those of a live peer's effects (`answer` forwards them to it). What the
        dashboard offers Allow and Deny for. Left out: a request whose asker is gone (a flow step's start that
        a stopped server left pending until its flow runs again, or a peer's that is not settled yet), which
        `answer` would refuse; `list` still lists it."""
        found, alive = [], {}  # each owner's liveness read once a call (it reads the journal's servers)
        for approval in self.pending():
            if approval["approval_id"] not in self._answers:
                effect = await self._effect(approval["effect_id"])
                if effect is None or effect.local or effect.terminal or self.forward is None:
                    continue
                owner = effect.state.owner
                if owner not in alive:
                    alive[owner] = self.owner_alive is not None and await self.owner_alive(owner)
                if not alive[owner]:
                    continue
            found.append(dict(approval))
        return found

    def list(self, **only: str | None) -> list[dict[str, Any]]:
        """The approvals whose `run_id`, `group`, `effect_id` and `status` are those given, oldest first."""
        wanted = {name: value for name, value in only.items() if value is not None}
        return [dict(a) for a in self._all.values() if all(a[name] == value for name, value in wanted.items())]

    async def answer(
        self,
        approval_id: str,
        decision: str,
        *,
        message: str | None = None,
        updated_input: dict[str, Any] | None = None,
        by: str = "client",
        forward: bool = True,
    ) -> dict[str, Any]:
        """Answers a pending approval: the sub-agent has it once it is journaled. One that another live server's
        sub-agent asked is forwarded to that server (`forward`, unless told not to: the request came from
        another process, `effectd approve` or a server forwarding it, and this is the server it was meant for)."""
        approval = self._all.get(approval_id)
        if approval is None:
            raise UnknownEffectError(f"unknown approval {approval_id!r} (list_approvals lists them)")
        if approval["status"] != "pending":
            raise InvalidRequestError(
                f"approval {approval_id} is already answered: {approval['status']} by {approval['decided_by']} "
                f"at {approval['answered_at']}"
            )
        effect = await self._effect(approval["effect_id"])
        if approval_id not in self._answers:
            if forward and self.forward is not None and effect is not None and not effect.local:
                answer: dict[str, Any] = {
                    "approval_id": approval_id,
                    "decision": decision,
                    "message": message,
                    "decided_by": by,
                }
                if updated_input is not None:
                    answer["updated_input"] = updated_input
                return await self.forward(effect, answer)  # its server answers: the sub-agent waits there
            raise InvalidRequestError(
                f"approval {approval_id} is pending, but no sub-agent waits for it on this server (the server "
                "that ran its effect is gone); it is denied when effectd next starts"
            )
        status = "allowed" if decision == "allow" else "denied"
        await self._answer(effect, approval, status, by, message, updated_input)
        self._answers[approval_id].set()
        return dict(approval)

    async def _answer(
        self,
        effect: Effect | None,
        approval: dict[str, Any],
        status: str,
        by: str | None,
        message: str | None,
        updated_input: dict[str, Any] | None = None,
    ) -> None:
        answer: dict[str, Any] = {
            "approval_id": approval["approval_id"],
            "status": status,
            "decided_by": by,
            "message": message,
            "answered_at": now_iso(),
        }
        if updated_input is not None:
            answer["updated_input"] = updated_input
        event = Event(ANSWERED, approval["run_id"], approval["effect_id"], dict(answer))
        if effect is not None:
            await self._supervisor.record(effect, event)
        else:
            await self._supervisor.journal.append(event)
        approval.update(answer)

    async def _effect(self, effect_id: str) -> Effect | None:
        try:
            return await self._supervisor.get(effect_id)
        except UnknownEffectError:
            return None


def write_gate_config(path: Path, socket_path: str, token: str, effect_id: str) -> None:
    """The `--mcp-config` file that starts the effect's gate (mode 0600: it holds the token)."""
    gate = {
        "type": "stdio",
        "command": sys.executable,
        "args": ["-m", MODULE],
        "env": {"EFFECTD_GATE_SOCKET": socket_path, "EFFECTD_GATE_TOKEN": token, "EFFECTD_EFFECT_ID": effect_id},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"mcpServers": {SERVER: gate}}, file)


def new_approval(effect: Effect, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """A pending approval of this effect's request to use `tool`."""
    return {
        "approval_id": new_id("apr_"),
        "effect_id": effect.effect_id,
        "run_id": effect.run_id,
        "group": effect.spec.group,
        "tool": tool,
        "input": tool_input,
        "status": "pending",
        "decided_by": None,
        "message": None,
        "requested_at": now_iso(),
        "answered_at": None,
    }


def _first_match(rules: list[dict[str, Any]], tool: str, tool_input: dict[str, Any]) -> dict[str, Any] | None:
    text = json.dumps(tool_input, sort_keys=True, ensure_ascii=False)
    for rule in rules:
        if rule["tool"] not in ("*", tool):
            continue
        if rule.get("input_matches") is not None and re.search(rule["input_matches"], text) is None:
            continue
        return rule
    return None


def _rule_says(rule: dict[str, Any]) -> str:
    matched = f" matching {rule['input_matches']!r}" if rule.get("input_matches") else ""
    return f"denied by the approval rule for {rule['tool']}{matched}"


async def wait_or_asked(
    approvals: Approvals, effects: Sequence[Effect], cursor: int, waiting: Callable[[], Awaitable[GroupWait]]
) -> GroupWait:
    """`await_group`, returning early when one of `effects` asks for an approval after `cursor`: then its
    `approvals` lists them and its `cursor` is the last request's seq, so each request wakes it once
    (the ends up to that seq are in `done`, the later ones come with the next call)."""
    ids = {effect.effect_id for effect in effects}
    result: GroupWait | None = None
    refused: EffectdError | None = None  # raised here, not inside the task group (a tool error, not a crash)
    if not approvals.asked_after(ids, cursor):
        async with anyio.create_task_group() as tg:

            async def group() -> None:
                nonlocal result, refused
                try:
                    result = await waiting()
                except EffectdError as exc:
                    refused = exc
                tg.cancel_scope.cancel()

            async def asked() -> None:
                await approvals.wait_asked(ids, cursor)
                tg.cancel_scope.cancel()

            tg.start_soon(group)
            tg.start_soon(asked)
    if refused is not None:
        raise refused
    if result is not None:
        return result
    found = approvals.asked_after(ids, cursor)
    seq = max(approval.pop("seq") for approval in found)
    done = ended_after(effects, cursor, seq)
    ended = set(done) | {e for e in effects if e.terminal and (e.terminal_seq or 0) <= cursor}
    return GroupWait(
        done=[e.record() for e in done],
        pending=[e.effect_id for e in effects if not e.terminal],
        complete=all(e in ended for e in effects),
        cursor=seq,
        timed_out=False,
        approvals=[Approval.model_validate(approval) for approval in found],
    )
