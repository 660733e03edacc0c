"""Inside a sandbox whose network is an allow-list: the relay between its loopback and effectd's proxy.

Run by bubblewrap as `python -I -S relay.py SOCKET -- COMMAND...`, in the sandbox's own network
namespace, where nothing outside can be reached. It listens on 127.0.0.1 (a free port) there, names
that address in HTTP_PROXY / HTTPS_PROXY (and the lowercase names), leaves a forwarder that carries each
connection to SOCKET (the unix socket of effectd's proxy, bound into the sandbox), and execs COMMAND in
its own place, so the command is bwrap's child as without the relay. The forwarder is orphaned to the
sandbox's init, and dies with the sandbox when the command ends. Standard library only: it starts in
about 20 ms. What may pass is decided by the proxy, outside, not here.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _carry(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _forward(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_carry, args=(client, path), daemon=True).start()


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: relay.py SOCKET -- COMMAND...")
    path, command = argv[0], argv[2:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)  # connections wait in the backlog until the forwarder accepts them
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    child = os.fork()
    if child == 0:
        if os.fork() == 0:  # the forwarder, orphaned to the sandbox's init: never the command's child
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)  # never holds the effect's output pipe open
            try:
                _forward(listener, path)
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    listener.close()
    env = {name: value for name, value in os.environ.items() if name.lower() != "no_proxy"}
    env.update(dict.fromkeys(PROXY_VARIABLES, url), NODE_USE_ENV_PROXY="1")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # bwrap ran with it ignored (see effectd.runner.sandbox)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        sys.stderr.write(f"effectd sandbox: cannot run {command[0]!r}: {exc.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
