"""Starting a child through the C library's `posix_spawn`, called with ctypes, which lets go of the GIL.

CPython 3.11's `subprocess.Popen` holds the GIL through its `vfork` until the child has exec'd, so
no other thread runs Python meanwhile, not the event loop, not another spawner. A ctypes call
releases the GIL for the `vfork` and the exec. The child gets what `Popen(...,
start_new_session=True, close_fds=True)` gives it: its three standard descriptors and no other
(`closefrom`), a session of its own, `cwd`, an empty signal mask, and SIGPIPE and SIGXFSZ back to
their defaults (Python ignores them).

`spawn` is None where the C library lacks a piece of this (glibc before 2.34, musl, not Linux): the
runner then starts children with `Popen`.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
# glibc's opaque types are 80 (file actions), 336 (attributes) and 128 (sigset_t) bytes on 64-bit
# Linux; each buffer is larger than its type on every architecture glibc supports.
_ACTIONS_SIZE = 256
_ATTR_SIZE = 1024
_SIGSET_SIZE = 256
_NEEDED = (
    "posix_spawn",
    "posix_spawn_file_actions_init",
    "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_adddup2",
    "posix_spawn_file_actions_addchdir_np",
    "posix_spawn_file_actions_addclosefrom_np",
    "posix_spawnattr_init",
    "posix_spawnattr_destroy",
    "posix_spawnattr_setflags",
    "posix_spawnattr_setsigmask",
    "posix_spawnattr_setsigdefault",
    "sigemptyset",
    "sigaddset",
)


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in _NEEDED):
        return None
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    return libc


_LIBC = _libc()


def _check(code: int, what: str) -> None:
    if code != 0:
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _sigset(libc: Any, *signums: int) -> ctypes.Array[ctypes.c_char]:
    sigset = ctypes.create_string_buffer(_SIGSET_SIZE)
    libc.sigemptyset(sigset)
    for signum in signums:
        libc.sigaddset(sigset, signum)
    return sigset


def _posix_spawn(argv: Sequence[str], env: Mapping[str, str], cwd: str | None, fds: tuple[int, int, int]) -> int:
    """Starts `argv` (argv[0] a path: no PATH search) in a new session with `fds` as its stdin,
    stdout and stderr and `env` as its whole environment; returns its pid. Raises OSError with the
    errno of what failed in the child (its chdir, its exec), as `Popen` would."""
    libc = _LIBC
    assert libc is not None
    if min(fds) < 3:  # dup2 onto itself would keep close-on-exec; never the case for the runner's pipes
        raise ValueError("the child's descriptors must not be 0, 1 or 2 of this process")
    actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    try:
        _check(libc.posix_spawnattr_init(attr), "posix_spawnattr_init")
        try:
            for target, fd in enumerate(fds):
                _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target), "adddup2")
            _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3), "addclosefrom_np")
            if cwd is not None:
                _check(libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)), "addchdir_np")
            flags = _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF
            _check(libc.posix_spawnattr_setflags(attr, flags), "posix_spawnattr_setflags")
            _check(libc.posix_spawnattr_setsigmask(attr, _sigset(libc)), "posix_spawnattr_setsigmask")
            defaults = _sigset(libc, signal.SIGPIPE, signal.SIGXFSZ)
            _check(libc.posix_spawnattr_setsigdefault(attr, defaults), "posix_spawnattr_setsigdefault")
            args = [os.fsencode(a) for a in argv]
            environ = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
            if any(b"\0" in item for item in (*args, *environ)) or any(b"=" in os.fsencode(k) for k in env):
                raise ValueError("an argument or an environment variable holds a NUL, or a name holds '='")
            argv_c = (ctypes.c_char_p * (len(args) + 1))(*args, None)
            envp_c = (ctypes.c_char_p * (len(environ) + 1))(*environ, None)
            pid = ctypes.c_int()
            code = libc.posix_spawn(ctypes.byref(pid), args[0], actions, attr, argv_c, envp_c)  # GIL released
            if code != 0:
                raise OSError(code, os.strerror(code), argv[0])
            return pid.value
        finally:
            libc.posix_spawnattr_destroy(attr)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)


spawn: Callable[[Sequence[str], Mapping[str, str], str | None, tuple[int, int, int]], int] | None = (
    _posix_spawn if _LIBC is not None else None
)
