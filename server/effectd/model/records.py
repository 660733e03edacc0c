"""Effect specs, records, statuses and the few helpers every layer shares (ids, timestamps)."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped"]
CancelReason = Literal[
    "user", "timeout", "idle_timeout", "fail_fast", "client_cancelled", "shutdown", "superseded", "budget"
]
Kind = Literal["command", "harness"]
Terminal = Literal["succeeded", "failed", "cancelled", "skipped"]  # how an effect ends

ACTIVE: frozenset[str] = frozenset({"pending", "queued", "running"})
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "skipped"})
STATUSES: tuple[str, ...] = ("pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped")

# The transitions the supervisor may make; anything else is a bug (see Effect.transition).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"queued", "cancelled", "skipped"}),
    "queued": frozenset({"running", "succeeded", "failed", "cancelled", "skipped"}),  # succeeded: a cached step
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),  # queued again: a retry
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "skipped": frozenset(),
}

TAIL_BYTES = 4096
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_GRACE_S = 600.0
MAX_WAIT_S = 55.0
# A cancel waits this long for the process group to go; past it (a long grace_s) the record comes
# back still `running` with the kill under way, so a call stays within a client's 60 s timeout.
CANCEL_WAIT_S = 50.0

# Argument types shared by every tool and by flow steps, so a limit is written once.
Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00]*$", description="no NUL")]
Duration = Annotated[float, Field(gt=0, le=MAX_DURATION_S, description="seconds, at most 7 days")]
Grace = Annotated[float, Field(ge=0, le=MAX_GRACE_S, description="seconds from SIGTERM to SIGKILL, at most 600")]
Wait = Annotated[float, Field(ge=0, le=MAX_WAIT_S, description="seconds, at most 55")]


class SandboxSpec(BaseModel):
    """An effect's sandbox as applied: its network, and the paths (absolute) it may write and must not see.

    `network` is "none", "all", or {"allow": ["HOST:PORT", ...]}. Besides `write`, the effect writes its cwd
    (its worktree when isolated) and its own TMPDIR; besides `hide`, it never sees the journal's folder,
    the output folder, the token file and the other effects' worktrees."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: Literal["none", "all"] | dict[str, list[str]] = "none"
    write: list[str] = Field(default_factory=list)
    hide: list[str] = Field(default_factory=list)


class EffectSpec(BaseModel):
    """What to run and under which limits: validated once, journaled in EFFECT_REQUESTED, never changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    command: list[str]
    harness: str | None = None
    prompt: str | None = None
    args: list[str] = Field(default_factory=list)
    parser: str | None = None
    prompt_via: Literal["arg", "stdin"] = "arg"
    group: str | None = None
    label: str | None = None
    key: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    grace_s: float = 5.0
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    stdin: str | None = None
    max_attempts: int = 1
    retry_backoff_s: float = 0.0
    group_max_concurrency: int | None = None
    flow_id: str | None = None
    step_id: str | None = None
    templated: bool = False
    isolation: Literal["none", "worktree"] = "none"
    worktree_base: str | None = None
    keep_worktree: bool = False
    for_each: list[Any] | str | None = None  # a flow step that fans out: its items, or a template of them
    item_index: int | None = None  # a fan-out child: the index of its item
    pipe_from: str | None = None  # a piped flow step: the effect (one of depends_on) whose output is its stdin
    resources: dict[str, float] | None = None
    sandbox: SandboxSpec | None = None  # None: not sandboxed
    # --- limits (issue 23): the request's over the config's [limits], as the effect's cgroup enforces them ---
    limits: dict[str, int | float] | None = None
    # --- approvals (issue 25): None when off ---
    approvals: Literal["ask"] | None = None
    approval_rules: list[dict[str, Any]] | None = None
    approval_timeout_s: float | None = None
    start_approval: bool = False  # a flow step with `approval: true`: it waits for an allowed "start" first

    def identity(self) -> dict[str, Any]:
        """The arguments that make two dispatches with the same key the same request."""
        return self.model_dump(exclude={"key"})


class EffectRecord(BaseModel):
    """The effect as every tool reports it (CONTRACT.md, "Effect record")."""

    effect_id: str
    run_id: str
    group: str | None = None
    label: str | None = None
    key: str | None = None
    kind: Kind
    harness: str | None = None
    command: list[str]
    status: Status
    cancel_reason: CancelReason | None = None
    cancel_message: str | None = None
    error: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    result: Any = Field(
        default=None,
        description=(
            "What the effect produced, any JSON value: a harness's {answer, is_error, cost_usd, usage, turns, "
            "session_id, ...} (with `file`, what its result file held, and `usage_refused`, the bogus usage "
            "figures it reported), else the JSON its result file held; null when there is none"
        ),
        json_schema_extra={"type": ["object", "array", "string", "number", "boolean", "null"]},
    )
    result_error: str | None = None
    output_tail: str = ""
    output_bytes: int = 0
    output_truncated: bool = False
    output_pruned: bool = False  # `effectd prune` removed the output log and result file
    depends_on: list[str] = Field(default_factory=list)
    pid: int | None = None
    attempt: int = 0
    max_attempts: int = 1
    progress: dict[str, Any] | None = None
    last_output_at: str | None = None
    stalled: bool = False
    flow_id: str | None = None
    step_id: str | None = None
    workspace: dict[str, Any] | None = None
    owner: str = ""  # the id of the server that dispatched it ("" for an effect from before sessions)
    cached: bool = False
    reused_from: str | None = None
    node: str | None = None
    sandbox: SandboxSpec | None = None  # the sandbox it runs in, as applied (None: none)
    # --- limits (issue 23) ---
    limits: dict[str, int | float] | None = None  # as enforced: {"memory_mb": 512, "pids": 64, "cpu": 0.5}
    peak_memory_mb: float | None = None  # the effect's peak memory, where the host reports it
    # --- approvals (issue 25) ---
    approvals: Literal["ask"] | None = None
    waiting_for: Literal["approval"] | None = None  # the sub-agent waits for an answer (see list_approvals)


# --- ids and timestamps -------------------------------------------------------------------------

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_id_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def new_id(prefix: str) -> str:
    """A unique, time-sortable id (a monotonic ULID in lowercase Crockford base32) with a prefix."""
    global _last_ms, _last_rand
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms = ms
        value = (ms << 80) | (_last_rand & ((1 << 80) - 1))
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


def now_iso() -> str:
    """The current time as ISO 8601, UTC, microseconds, `Z`."""
    return format_iso(datetime.now(UTC))


def format_iso(moment: datetime) -> str:
    # isoformat is several times cheaper than strftime, and this runs for every journal event.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")


def seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((parse_iso(end) - parse_iso(start)).total_seconds(), 6)


# --- what the engine answers (every front-end shapes these, none builds its own) ---------------


class EffectList(BaseModel):
    """Effects newest first, with the summary of every effect the filter matched (not only the page)."""

    effects: list[EffectRecord]
    summary: dict[str, Any] | None = None


class CancelledGroup(BaseModel):
    """The effects a group cancel stopped, and the group's records once they ended."""

    cancelled: list[str]
    effects: list[EffectRecord]


# --- approvals (issue 25) ---------------------------------------------------------------------------


class Approval(BaseModel):
    """A sub-agent's request to use a tool, and its answer (CONTRACT.md, "Approvals")."""

    approval_id: str
    effect_id: str
    run_id: str
    group: str | None = None
    tool: str
    input: dict[str, Any]
    status: Literal["pending", "allowed", "denied", "timed_out"]
    decided_by: Literal["rule", "client", "dashboard", "cli", "timeout"] | None = None
    message: str | None = None
    requested_at: str
    answered_at: str | None = None
    updated_input: dict[str, Any] | None = None  # the input the answer let it use instead, when it changed it


class ApprovalList(BaseModel):
    approvals: list[Approval]


class GroupWait(BaseModel):
    """What `await_group` returns: completions after the cursor, in finishing order. The race modes
    (`first_success`, `quorum`) add `satisfied` and `winners`; they are null for `all` and `any`."""

    done: list[EffectRecord]
    pending: list[str]
    complete: bool
    cursor: int
    timed_out: bool
    satisfied: bool | None = None
    winners: list[EffectRecord] | None = None
    # Approvals (issue 25): set when it returned early because an awaited effect asks (see list_approvals).
    approvals: list[Approval] | None = None


class OutputChunk(BaseModel):
    """A piece of an effect's combined output, from byte `cursor` on."""

    effect_id: str
    data: str
    cursor: int
    eof: bool
    status: str


class HarnessList(BaseModel):
    harnesses: list[dict[str, Any]]
