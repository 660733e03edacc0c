"""The `[http]` table of the configuration, and the HTTP token: from `--token`, `--token-file`,
`$EFFECTD_TOKEN` or the table's `token_file`, in that order.

A token file keeps the secret out of the process's command line (`/proc/PID/cmdline` is readable by
every user of the machine); the file holds the token alone (surrounding whitespace and the final
newline are ignored).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from effectd.errors import ConfigError

log = logging.getLogger("effectd")


class HttpSettings(BaseModel):
    """`[http]`: `token_file`, `max_connections` (open connections at most), `header_timeout_s` (a
    connection that has not sent its request headers within it is closed)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    token_file: Path | None = None
    max_connections: int = Field(default=256, ge=1, le=100_000)
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)

    @field_validator("token_file", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        if not isinstance(value, str) or not value:
            raise ValueError("a path")
        return Path(value).expanduser()


HTTP_KEYS = tuple(HttpSettings.model_fields)


@dataclass(frozen=True, kw_only=True)
class HttpListen:
    """Where and how `effectd serve --http` listens: the flags over the `[http]` table, resolved once
    (by the command line) and taken as one by `effectd.app.serve` and `serve_http`."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    token: str | None = None  # None: no token (refused off loopback)
    max_connections: int = 256  # open connections at most
    header_timeout_s: float = 10.0  # a connection without its request headers by then is closed


def http_error(key: str | None, value: Any) -> str:
    """What is wrong with `[http]` `key` (None: an unknown key, or not a table), and what it takes."""
    if key == "token_file":
        return "config [http] token_file must be the path of a file holding the token"
    if key == "max_connections":
        return f"config [http] max_connections must be an integer from 1 to 100000, not {value!r}"
    if key == "header_timeout_s":
        return f"config [http] header_timeout_s must be seconds above 0, at most 600, not {value!r}"
    return f"config [http] takes {', '.join(f'`{k}`' for k in HTTP_KEYS)}"


def read_token_file(path: Path) -> str:
    """The token a file holds (ConfigError when it cannot be read or holds none); warns when other users
    may read it."""
    try:
        with open(path, encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"token file {path} is not a regular file")
            token = file.read(64 * 1024).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"token file {path} is not UTF-8 text") from exc
    if not token:
        raise ConfigError(f"token file {path} is empty; write the token into it")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("token file %s may be read by other users (mode %04o); `chmod 600` it", path, mode & 0o777)
    return token


def resolve_token(flag: str | None, flag_file: str | None, settings: HttpSettings) -> str | None:
    """The HTTP token: `--token`, else `--token-file`, else $EFFECTD_TOKEN, else `[http] token_file`."""
    if flag and flag_file is not None:
        raise ConfigError("give the token once: --token or --token-file, not both")
    if flag:
        return flag
    if flag_file is not None:
        return read_token_file(Path(flag_file).expanduser())
    if os.environ.get("EFFECTD_TOKEN"):
        return os.environ["EFFECTD_TOKEN"]
    if settings.token_file is not None:
        return read_token_file(settings.token_file)
    return None
