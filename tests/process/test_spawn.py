"""Starting children with `posix_spawn` through ctypes (`effectd.runner.spawn`), and the lock that
lets several spawner threads start leaders at once while a reaper pass or a tree walk sees none
half-started (issue 17)."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from effectd.runner.reaper import SpawnLock
from effectd.runner.spawn import spawn

pytestmark = pytest.mark.skipif(spawn is None, reason="no posix_spawn with closefrom and chdir here (glibc < 2.34)")


@contextmanager
def child_output() -> Iterator[tuple[int, int, list[bytes]]]:
    """A read-only /dev/null for stdin, a pipe for stdout and stderr; the output once the pipe closes."""
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    read, write = os.pipe2(os.O_CLOEXEC)
    out: list[bytes] = []
    try:
        yield devnull, write, out
    finally:
        os.close(write)
        while chunk := os.read(read, 65536):
            out.append(chunk)
        os.close(read)
        os.close(devnull)


def run(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[int, bytes]:
    assert spawn is not None
    with child_output() as (devnull, write, out):
        pid = spawn(argv, env if env is not None else {"PATH": os.defpath}, cwd, (devnull, write, write))
        _, status = os.waitpid(pid, 0)
    return pid, b"".join(out)


def status_field(text: bytes, name: bytes) -> int:
    line = next(line for line in text.splitlines() if line.startswith(name + b":"))
    return int(line.split()[1], 16)


def test_the_child_gets_its_three_descriptors_and_no_other():
    leak = os.open(os.devnull, os.O_RDONLY)  # inheritable: Popen(close_fds=True) would not pass it either
    os.set_inheritable(leak, True)
    try:
        _, out = run(["/bin/sh", "-c", "ls /proc/$$/fd"])
    finally:
        os.close(leak)
    assert sorted(int(fd) for fd in out.split()) == [0, 1, 2]


def test_the_child_leads_a_session_of_its_own_in_the_directory_and_environment_given(tmp_path: Path):
    pid, out = run(
        ["/bin/sh", "-c", 'echo "$(cut -d" " -f6 /proc/$$/stat) $(pwd) $ONLY"'], {"ONLY": "this"}, str(tmp_path)
    )
    session, cwd, only = out.decode().split()
    assert int(session) == pid
    assert cwd == str(tmp_path) and only == "this"


def test_the_child_has_no_signal_blocked_and_sigpipe_back_to_its_default():
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python ignores it; a child must not
    _, out = run(["/bin/cat", "/proc/self/status"])
    assert status_field(out, b"SigBlk") == 0
    assert not status_field(out, b"SigIgn") & (1 << (signal.SIGPIPE - 1))


def test_a_missing_program_or_directory_is_the_oserror_exec_or_chdir_gave():
    with pytest.raises(FileNotFoundError):
        run(["/nonexistent/program"])
    with pytest.raises(OSError) as raised:
        run(["/bin/true"], cwd="/nonexistent/directory")
    assert raised.value.errno == errno.ENOENT


def test_starts_share_the_lock_and_an_exclusive_holder_waits_for_them_and_goes_first():
    lock, order = SpawnLock(), []
    first_in, second_in, release, queued = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def start(inside: threading.Event, name: str) -> None:
        with lock.starting():
            inside.set()
            order.append(name)
            release.wait(10)

    def exclusive() -> None:
        queued.set()
        with lock.exclusive():
            order.append("pass")

    starts = [
        threading.Thread(target=start, args=(first_in, "a")),
        threading.Thread(target=start, args=(second_in, "b")),
    ]
    for thread in starts:
        thread.start()
    assert first_in.wait(10) and second_in.wait(10)  # two starts hold the lock at once
    passer = threading.Thread(target=exclusive)
    passer.start()
    assert queued.wait(10)
    late = threading.Thread(target=start, args=(threading.Event(), "late"))
    for _ in range(100):  # the exclusive holder has queued up before the late start tries
        if lock._queued:
            break
        threading.Event().wait(0.01)
    late.start()
    assert "pass" not in order
    release.set()
    for thread in [*starts, passer, late]:
        thread.join(10)
    assert sorted(order[:2]) == ["a", "b"] and order[2:] == ["pass", "late"]


def test_what_exec_cannot_carry_is_refused_before_anything_starts():
    with pytest.raises(ValueError):
        run(["/bin/echo", "a\0b"])
    with pytest.raises(ValueError):
        run(["/bin/true"], {"A=B": "c"})
