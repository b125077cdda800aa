"""The stage server: a stage process that hands its run to a process whose imports are done.

Every stage process (`python -m tasks.stages.<stage>`, one per DVC stage) spends ~5 s importing
torch, MLflow with its SQL store and scikit-learn before its own work starts, and the default
study runs 50 of them. With `compute.stage_server: true` (params.yaml; the default) the first stage
process starts a server that imports all of that once (`PRELOAD` and every stage module), and each
stage process, this one included, hands the server its module, arguments, working folder,
environment and standard streams (their file descriptors). The server forks a child that runs the
stage as `python -m` would, on those streams, and the stage process ends with the child's exit
status, so DVC sees what it would have seen. The server ends `IDLE_SECONDS` after its last stage.

What keeps a served stage the same as one run in its own process:
- A server is keyed by everything its imports depend on: the Python executable, the project's
  source files (their paths, sizes and modification times), the installed packages' folder and
  the environment (less the variables that change from one command to the next, `PER_COMMAND`,
  which the child gets all the same). A change of any of them starts another server; the old
  one ends once idle. The OpenMP wait policy (`compute.wait_policy`) is in the environment by then.
- The child starts from the server's freshly imported state (nothing but imports runs in the
  server), replaces its environment and working folder with the stage process's, and draws fresh
  random states (torch's seed, numpy's global state; Python's `random` reseeds itself on a fork).
- If the stage process ends (killed, Ctrl-C), the child is terminated: it watches the connection.
- Only the same user's processes are served or trusted (SO_PEERCRED on both ends of the socket,
  an abstract Unix socket named after the user and the key).
- Until the server has accepted the stage, anything that goes wrong (no fork, no abstract sockets,
  a server that fails to start) runs the stage in its own process, as without a server; a server
  that fails to start says why in one line first.

This module imports only the standard library until the server preloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Seconds a server stays up after its last stage ends (DVC starts the next stage within ~1 s).
IDLE_SECONDS = 15.0
# Seconds a stage process waits for a server it started to finish its imports.
START_SECONDS = 180.0
# Imports every stage module leaves to its run (tracking, metrics), done once in the server.
PRELOAD = (
    "torch",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "sklearn.svm",
    "sklearn.linear_model",
)
# Environment variables that differ from one command to the next without changing any import.
PER_COMMAND = frozenset({"DVC_STAGE", "_", "PWD", "OLDPWD", "SHLVL", "PYTEST_CURRENT_TEST"})
ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `tasks` and `unlearn`
_SERVER_MODULE = __name__
_HEADER = struct.Struct("!Q")  # the request's length, sent with the three stream descriptors
_STATUS = struct.Struct("!i")  # the child's exit status, after the one-byte acceptance


def supported() -> bool:
    """Whether this platform has what the server needs: fork, pidfds and fd passing on abstract sockets."""
    return sys.platform == "linux" and hasattr(socket, "send_fds") and hasattr(os, "pidfd_open")


def server_key(environment: dict[str, str]) -> str:
    """What the server's imports depend on, hashed: executable, sources, installed packages, environment."""
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{ROOT}\0".encode())
    for package in ("tasks", "unlearn"):
        for path in sorted((ROOT / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    import sysconfig

    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        digest.update(f"{folder}\0{os.stat(folder).st_mtime_ns if os.path.isdir(folder) else 0}\0".encode())
    for name in sorted(environment.keys() - PER_COMMAND):
        digest.update(f"{name}={environment[name]}\0".encode(errors="surrogateescape"))
    return digest.hexdigest()[:32]


def server_address(key: str) -> str:
    """The abstract socket name of the server with `key`, for this user."""
    return f"\0unlearn-stage-server-{os.getuid()}-{key}"


def run_served(module: str, arguments: Sequence[str]) -> int | None:
    """Run `python -m module arguments` in a server's child; its exit status, or None where it did not start.

    None means nothing ran: the caller runs the stage itself.
    """
    if not supported():
        return None
    environment = dict(os.environ)
    address = server_address(server_key(environment))
    connection = _connect(address) or _start(address, environment)
    if connection is None:
        return None
    request = {"module": module, "argv": list(arguments), "cwd": os.getcwd(), "env": environment}
    body = json.dumps(request).encode(errors="surrogateescape")
    try:
        socket.send_fds(connection, [_HEADER.pack(len(body))], [0, 1, 2])
        connection.sendall(body)
        accepted = connection.recv(1)
    except OSError:
        accepted = b""
    if accepted != b"A":  # the server ended or refused before it forked: nothing ran
        connection.close()
        return None
    try:
        status = _receive_exactly(connection, _STATUS.size)
    except KeyboardInterrupt:  # Ctrl-C: this process ends, and with it the stage (it watches the connection)
        return 130
    if status is None:
        print("error: the stage server ended before the stage did", file=sys.stderr)
        return 1
    code = _STATUS.unpack(status)[0]
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


def _peer_is_this_user(connection: socket.socket) -> bool:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1] == os.getuid()


def _connect(address: str) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
        if _peer_is_this_user(connection):
            return connection
    except OSError:
        pass
    connection.close()
    return None


def _start(address: str, environment: dict[str, str]) -> socket.socket | None:
    """Start a server for `address` and connect to it once its imports are done (None: it failed)."""
    server = subprocess.Popen(
        [sys.executable, "-m", _SERVER_MODULE, address[1:]],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # not in the stage process's group: a Ctrl-C there does not reach it
    )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        connection = _connect(address)
        if connection is not None:
            server.stderr.close()
            return connection
        if server.poll() is not None and server.returncode != 0:
            reason = (server.stderr.read().decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            print(f"stage server: did not start ({reason}); the stage runs in its own process", file=sys.stderr)
            return None
        time.sleep(0.02)  # exit 0: another stage process's server holds the address; it is still importing
    server.kill()
    print(f"stage server: not ready after {START_SECONDS:.0f} s; the stage runs in its own process", file=sys.stderr)
    return None


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        part = connection.recv(size - len(data))
        if not part:
            return None
        data += part
    return data


# --- the server ---------------------------------------------------------------------------------


def serve(address: str) -> None:
    """Preload, listen on `address` and fork a child per stage until idle for IDLE_SECONDS."""
    import gc
    import importlib
    import pkgutil

    for name in PRELOAD:
        importlib.import_module(name)
    import tasks.stages
    from unlearn.threads import runtime_wait

    runtime_wait()  # the children's `configure_threads` compares the policy torch loaded with
    for found in pkgutil.iter_modules(tasks.stages.__path__):
        if f"tasks.stages.{found.name}" != _SERVER_MODULE:
            importlib.import_module(f"tasks.stages.{found.name}")
    gc.collect()
    gc.freeze()  # the imports' objects: not walked by collections, not copied into the children by them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
    except OSError:  # another stage process's server holds it: that one serves
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the starting stage process stops reading our stderr once connected
        os.dup2(devnull, fd)
    listener.listen(16)
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    idle_since = time.monotonic()
    while True:
        timeout = None if children else IDLE_SECONDS - (time.monotonic() - idle_since)
        if timeout is not None and timeout <= 0:
            return
        ready, _, _ = select.select([listener, *children], [], [], timeout)
        for item in ready:
            if item is listener:
                accepted = _accept(listener, children)
                if accepted is not None:
                    children[accepted[0]] = accepted[1:]  # type: ignore[assignment]
            else:
                pid, connection = children.pop(item)
                _, status = os.waitpid(pid, 0)
                os.close(item)
                with contextlib.suppress(OSError):  # the stage process is gone
                    connection.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
                connection.close()
                idle_since = time.monotonic()


def _accept(listener: socket.socket, children: dict) -> tuple[int, int, socket.socket] | None:
    """Read one request and fork its child: (pidfd, pid, connection), or None if refused."""
    connection, _ = listener.accept()
    fds: list[int] = []
    try:
        connection.settimeout(10)
        if not _peer_is_this_user(connection):
            raise OSError("another user")
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        body = _receive_exactly(connection, _HEADER.unpack(header)[0]) if len(header) == _HEADER.size else None
        if body is None or len(fds) != 3:
            raise OSError("incomplete request")
        request = json.loads(body.decode(errors="surrogateescape"))
        connection.settimeout(None)
        pid = os.fork()
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    if pid == 0:
        try:
            listener.close()
            for pidfd, (_, other) in children.items():
                os.close(pidfd)
                other.close()
            _child(connection, request, fds)  # ends the process
        except BaseException:  # before the stage ran (a working folder that is gone): say why
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # the stage process is gone: the child sees that and ends
        connection.sendall(b"A")
    return os.pidfd_open(pid), pid, connection


def _child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """Run the stage as `python -m` would, on the stage process's streams, and exit with its status."""
    import io
    import runpy
    import threading
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # the standard streams on the new descriptors, buffered as the interpreter buffers them
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, f"__{name}__")
        if fd == 0:
            binary = io.BufferedReader(io.FileIO(0, "r", closefd=False))
            stream = io.TextIOWrapper(binary, encoding=old.encoding, errors=old.errors)
        else:
            raw = io.FileIO(fd, "w", closefd=False)
            binary = raw if unbuffered else io.BufferedWriter(raw)
            stream = io.TextIOWrapper(binary, encoding=old.encoding, errors=old.errors,
                                      line_buffering=fd == 2 or os.isatty(fd), write_through=unbuffered)  # fmt: skip
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)

    def watch() -> None:  # the stage process ended before the stage: end too, as its own process would
        try:
            connection.recv(1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stage-process-watch", daemon=True).start()
    # fresh random states, as a new interpreter draws them (Python's `random` reseeds after a fork itself)
    import numpy
    import torch

    torch.seed()
    numpy.random.seed()
    sys.argv = ["-m", *request["argv"]]
    # `python -m` runs the module as __main__ without importing it under its own name first
    package, _, name = request["module"].rpartition(".")
    if sys.modules.pop(request["module"], None) is not None and package in sys.modules:
        vars(sys.modules[package]).pop(name, None)
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    from tasks.stages.entry import exit_without_teardown

    exit_without_teardown(code)


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve("\0" + sys.argv[1])
