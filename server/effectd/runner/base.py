"""The runner interface: what the supervisor may ask of a process, wherever it runs."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from effectd.runner.sandbox import Sandbox


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one process of an effect."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    stdin: bytes | None = None
    # Where the process may write its JSON result (its EFFECTD_RESULT_FILE); the runner removes an
    # earlier attempt's file before the start and reads it after the exit.
    result_file: str | None = None
    # The effect the process belongs to: what the runner contains it by (its cgroup, its marker).
    effect_id: str | None = None
    result_limit_bytes: int = 1024 * 1024  # a larger result file is refused (ResultFileError), never read
    # Instead of `stdin`: bytes that arrive while the process runs (a flow pipe), fed by
    # `ProcessHandle.feed_stdin`; EOF when the source ends.
    stdin_source: AsyncGenerator[bytes, None] | None = None
    # The resources the effect needs where it runs (Ray resources, e.g. {"GPU": 1}); None: nothing special.
    resources: Mapping[str, float] | None = None
    # The sandbox to run it in (bubblewrap; see effectd.runner.sandbox); None: none.
    sandbox: Sandbox | None = None
    # What the effect's own cgroup lets it use: {"memory_mb": 512, "pids": 64, "cpu": 0.5}; None: no limit.
    limits: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How the leader process ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None
    # Why the runner cannot say how the process ended: "node_lost" (its node or its executor died).
    error: str | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.waitstatus_to_exitcode(status), None)


@dataclass(frozen=True)
class Usage:
    """What the effect's cgroup says of its memory once its processes are gone."""

    peak_memory_mb: float | None = None  # None: the host does not report it
    memory_killed: bool = False  # the kernel's OOM killer ended one of its processes at its memory limit


@dataclass(frozen=True)
class RecordedProcess:
    """What the journal knows of an effect's process: how recovery finds what it left behind."""

    effect_id: str
    pid: int | None = None
    start_marker: int | None = None


class SpawnError(Exception):
    """Raised when the process could not be started (missing executable, bad cwd, no permission)."""


class ResultFileError(Exception):
    """Raised when a result file is there but was not read; the message says why (a link, not a regular
    file, over `result_limit_bytes`, not UTF-8, not JSON)."""


class ProcessHandle(ABC):
    """One started process group, as the supervisor sees it."""

    pid: int
    start_marker: int | None
    node: str | None = None  # where it runs: the host name, or the Ray node (id and host)

    @abstractmethod
    async def read(self) -> bytes:
        """The next chunk of combined stdout and stderr; b"" once every writer has closed the pipe."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Waits for the leader process to exit (not for its output to end)."""

    @abstractmethod
    def signal_group(self, signum: int) -> None:
        """Sends `signum` to every process of the effect, whatever process group or session it moved
        to; processes already gone are not an error."""

    @abstractmethod
    async def wait_group_gone(self, within_s: float) -> bool:
        """Waits until no live process of the effect is left; False if some still are after `within_s`."""

    @abstractmethod
    async def read_result(self) -> Any:
        """The JSON the process wrote to its result file, or None (no file, or an empty one). Raises
        ResultFileError when a file is there but was not read. Never blocks the event loop, whatever
        the process left at that path."""

    async def feed_stdin(self) -> None:
        """Feeds the launch's `stdin_source` to the process's stdin until the source ends (then EOF) or
        the process stops reading (it exited or closed stdin). Holds one chunk at a time: a slow
        reader slows the feeding, never grows memory. The supervisor runs it while the process runs."""
        return None

    def usage(self) -> Usage:
        """The effect's memory verdict (its peak, whether its memory limit killed it); read once its
        processes are gone and before `close`, which removes the cgroup that tells."""
        return Usage()

    @abstractmethod
    def close(self) -> None:
        """Releases descriptors; the process group must already be gone."""


class Runner(ABC):
    async def aclose(self) -> None:  # noqa: B027 - most runners hold nothing
        """Releases what the runner holds (a Ray connection it opened); effects are over by then."""

    def sandbox_problem(self) -> str | None:
        """Why this runner cannot run an effect in a sandbox (what to install or enable), or None when it can.
        May block (a probe, once): call it off the event loop."""
        return f"the {type(self).__name__} cannot run sandboxed effects; sandboxes need the local runner"

    def refuse_limits(self, limits: Mapping[str, float]) -> str | None:
        """Why this runner cannot enforce `limits` where it runs effects (which controller is missing),
        or None; asked at dispatch, so a limit is never silently dropped."""
        return "this runner enforces no `limits`" if limits else None

    @abstractmethod
    async def start(self, launch: Launch) -> ProcessHandle:
        """Starts the process and returns once it exists; raises SpawnError when it cannot."""

    async def leftover_ids(self) -> set[str] | None:
        """The ids of the effects that left something alive where this runner runs them (a cgroup, a process
        whose environment names them), whatever journal they belong to; None when the runner cannot tell,
        and recovery then asks `kill_leftovers` about every recorded effect. Recovery asks only about these,
        so that a start reads what is live, not the whole history."""
        return None

    @abstractmethod
    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        """Kills whatever is still alive of these effects (a server died, or a process escaped): the
        recorded process when it is still the same one (never a pid alone), and any process carrying
        the effect's id in its environment or left in its cgroup, whatever its group or session."""
