"""One deletion batch at a time, and a batch that dies never blocks the next one.

The guard is a kernel lock (`fcntl.flock`) on a file beside the ledger, the state every
batch extends. Every process that works on the project folder takes it before it touches
the inbox or the ledger, and the kernel releases it when the holder ends, however it ends
(SIGKILL, a lost machine's NFS lease): there is no slot to give back by hand. While it is
held the lock file names its holder (host, pid, since when), so a run that finds the lock
taken waits a bounded time and then stops with an error saying who holds it.

With a Prefect server (`PREFECT_API_URL` set) the flow also holds Prefect's global
concurrency limit `deletion-batch` (one slot, see flows/deletion_batch.py) with a lease it
renews while it runs; a worker killed mid-batch stops renewing, and the server's
repossessor frees the slot once the lease has expired (at least 60 s, checked every 15 s).
The embedded default (no server: a temporary API per process) keeps Prefect's leases in the
memory of the process that took them, so a killed run's slot would never be freed there; it
relies on the kernel lock alone, which covers every process of the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from unlearn.errors import UnlearnError

POLL_SECONDS = 0.5


class BatchLockedError(UnlearnError, RuntimeError):
    """Another deletion batch held the lock for longer than this run was willing to wait.

    Not a TimeoutError: Prefect would report the flow run as timed out, which it did not.
    """


def lock_path(ledger: str | Path) -> Path:
    """The lock file of the ledger at `ledger`: `<ledger>.lock` beside it."""
    ledger = Path(ledger)
    return ledger.with_name(f"{ledger.name}.lock")


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, as the holder wrote it; "unknown" if unreadable."""
    try:
        holder = json.loads(path.read_text() or "{}")
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']} ({holder['purpose']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown holder"


@contextlib.contextmanager
def batch_lock(ledger: str | Path, timeout_seconds: float, purpose: str = "deletion batch") -> Iterator[Path]:
    """Hold the ledger's lock for the block; wait at most `timeout_seconds` for it.

    Raises:
        BatchLockedError: the lock stayed taken for `timeout_seconds`; the message names its holder.
    """
    path = lock_path(ledger)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a symlink planted in place of the lock file is refused, never written through.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        _acquire(descriptor, path, timeout_seconds)
        _write_holder(descriptor, purpose)
        try:
            yield path
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _acquire(descriptor: int, path: Path, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BatchLockedError(
                    f"another deletion batch holds {path} ({holder_of(path)}); waited {timeout_seconds:g} s "
                    "(deletion.lock_timeout_seconds): this run stops, the next one will try again"
                ) from None
            time.sleep(POLL_SECONDS)


def _write_holder(descriptor: int, purpose: str) -> None:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "purpose": purpose}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode(), 0)


def prefect_server_configured() -> bool:
    """Whether Prefect talks to a server (PREFECT_API_URL) rather than a temporary per-process API."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
