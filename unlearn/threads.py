"""How many CPU threads torch uses, and how OpenMP's idle threads wait: one policy for every process.

torch's CPU kernels run on an OpenMP team. Its threads spin while they wait for each other at
each kernel's end, so on a machine that is not idle a team wider than the free cores wastes the
cores it shares: two 2-thread processes on 2 cores slow each other down 10x or more, and one
2-thread process beside one busy process loses most of its speed. So each process picks:

- threads: `auto` is the cores it may run on (`os.sched_getaffinity`) less the cores other
  processes keep busy right now (sampled from /proc/stat over a fifth of a second; the 1-minute
  load average where that is missing), shared among the `jobs` compute tasks this process runs at
  once (a flow's tasks in the threads of its task runner), at least 1. A core counts as free when
  at least three quarters of it is idle. A number is used as given; OMP_NUM_THREADS, when the
  environment sets it, is taken for `auto`.
- wait: `passive` makes idle OpenMP threads sleep at once (OMP_WAIT_POLICY=PASSIVE); `active`
  makes them spin; `auto` leaves the runtime's default (libgomp spins briefly, then sleeps).

The wait policy is read by the OpenMP runtime when it loads, with torch: `configure_threads`
sets it in the environment, where it holds for this process only if torch is not imported yet,
and for every process started from this one. The thread count holds at once.

This module does not import torch, so a process can configure itself before torch loads.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

from unlearn.errors import ConfigError

WAIT_POLICIES = ("auto", "passive", "active")
DEFAULT_WAIT_POLICY = "auto"  # params.yaml's compute.wait_policy when left out
# A core counts as free for one more thread when at least this share of it is idle.
FREE_CORE_SHARE = 0.75
SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class ThreadChoice:
    """What `configure_threads` chose, and from what: `line()` is the log line a stage prints."""

    threads: int
    wait_policy: str  # auto | passive | active, as asked
    cores: int  # cores this process may run on
    busy: float | None  # cores other work kept busy (None: not measured, the count was given)
    jobs: int  # compute tasks sharing the cores
    setting: str  # "auto", "OMP_NUM_THREADS" (auto, from the environment) or the number asked for
    wait_in_effect: bool  # False: torch was loaded before the wait policy was set (children get it)

    def line(self) -> str:
        """`threads: 1 (auto: 2 cores, 1.0 busy elsewhere, 1 job; passive wait)`."""
        why = f"{self.cores} cores" if self.busy is None else f"{self.cores} cores, {self.busy:.1f} busy elsewhere"
        if self.setting == "OMP_NUM_THREADS":
            why = f"auto: OMP_NUM_THREADS={self.threads}; {why}"
        else:
            why = f"auto: {why}" if self.setting == "auto" else f"set to {self.setting}; {why}"
        jobs = "1 job" if self.jobs == 1 else f"{self.jobs} jobs at once"
        wait = "runtime default wait" if self.wait_policy == "auto" else f"{self.wait_policy} wait"
        if not self.wait_in_effect:
            wait += " (for child processes: torch loaded first)"
        return f"threads: {self.threads} ({why}, {jobs}; {wait})"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's or taskset's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_ticks() -> tuple[int, int]:
    """All cores' (busy, total) clock ticks since boot, from /proc/stat (Linux; OSError elsewhere)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """Cores other processes keep busy now: /proc/stat over `seconds`, less this process's own use.

    This process's other threads (a flow's other tasks) are not counted: they are `jobs`. Where
    /proc/stat is missing, the 1-minute load average (which also counts this process's own recent
    work, so it errs towards fewer threads).
    """

    try:
        (busy_before, total_before), own_before, started = cpu_ticks(), time.process_time(), time.perf_counter()
        time.sleep(seconds)
        busy_after, total_after = cpu_ticks()
        own, wall = time.process_time() - own_before, time.perf_counter() - started
    except (OSError, ValueError, IndexError):
        return float(os.getloadavg()[0])
    share = (busy_after - busy_before) / max(1, total_after - total_before)
    return max(0.0, share * (os.cpu_count() or 1) - own / wall)


def parse_threads(value: object, key: str | None = "compute.threads") -> int | str:
    """`auto` or a positive integer; anything else is a ConfigError naming `key`."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{key + ': ' if key else ''}must be auto or a positive integer, got {value!r}")


def parse_wait_policy(value: object, key: str | None = "compute.wait_policy") -> str:
    """`auto`, `passive` or `active`; anything else is a ConfigError naming `key`."""
    if value in WAIT_POLICIES:
        return value
    raise ConfigError(f"{key + ': ' if key else ''}must be one of {', '.join(WAIT_POLICIES)}, got {value!r}")


def choose_threads(setting: int | str, cores: int, busy: float, jobs: int = 1) -> int:
    """The thread count for one of `jobs` compute tasks on `cores` cores, `busy` of them taken.

    `auto`: the free cores (a core counts when FREE_CORE_SHARE of it is idle) shared among the
    jobs, between 1 and `cores`. A number is used as given.
    """
    setting = parse_threads(setting)
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    if setting != "auto":
        return int(setting)
    free = max(0.0, cores - busy) / jobs
    return max(1, min(cores, math.floor(free + 1 - FREE_CORE_SHARE)))


def wait_environment(policy: str) -> dict[str, str | None]:
    """The environment of wait policy `policy` (None: remove the variable, the runtime's default)."""
    policy = parse_wait_policy(policy)
    if policy == "auto":
        return {"OMP_WAIT_POLICY": None}
    return {"OMP_WAIT_POLICY": policy.upper()}


def runtime_wait() -> str | None:
    """OMP_WAIT_POLICY as torch's OpenMP runtime read it: the environment's when torch was first seen loaded.

    A process that imports torch and later changes its environment (the stage server's children)
    calls this once right after the import, so the policy is recorded before the change.
    """
    if not _WAIT_AT_LOAD:
        _WAIT_AT_LOAD.append(os.environ.get("OMP_WAIT_POLICY"))
    return _WAIT_AT_LOAD[0]


_WAIT_AT_LOAD: list[str | None] = []


def environment_threads() -> int | None:
    """OMP_NUM_THREADS when the environment sets it to a positive integer (the tests, Dask's workers)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def configure_threads(threads: int | str = "auto", wait_policy: str = "auto", jobs: int = 1) -> ThreadChoice:
    """Choose and apply this process's thread count and OpenMP wait policy; returns the choice.

    `auto` takes OMP_NUM_THREADS when the environment sets it, as torch does (the test suite and
    Dask's worker processes set 1), and otherwise measures the free cores (`choose_threads`).
    The wait policy goes into the environment before torch is imported here, so it holds for this
    process when torch was not loaded yet, and for every child process.
    """
    threads, wait_policy = parse_threads(threads), parse_wait_policy(wait_policy)
    cores, busy, setting = usable_cores(), None, str(threads)
    if threads == "auto" and environment_threads() is not None:
        count, setting = environment_threads(), "OMP_NUM_THREADS"
    else:
        busy = busy_cores() if threads == "auto" else None
        count = choose_threads(threads, cores, busy or 0.0, jobs)
    if "torch" in sys.modules:
        runtime_wait()
    for name, value in wait_environment(wait_policy).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    import torch  # loads the OpenMP runtime with the policy above, unless it is loaded already

    torch.set_num_threads(count)
    in_effect = runtime_wait() == os.environ.get("OMP_WAIT_POLICY")
    return ThreadChoice(count, wait_policy, cores, busy, jobs, setting, in_effect)
