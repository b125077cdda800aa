"""The study's wall time on the machine as it is, and beside one competing busy process.

    python benchmarks/study_load.py                 # dvc repro of the default study, as is then loaded
    python benchmarks/study_load.py --old           # also with the old thread policy: before/after
    python benchmarks/study_load.py --until train   # a short slice: `dvc repro train` (smoke test)
    python benchmarks/study_load.py --unit          # one short digits training under each policy

Full mode: for each policy (params.yaml's `compute` section; `--old` adds `threads: <cores>`
with the runtime's default wait, what every stage did before the section existed) and each
condition (the machine as it is; then with the competitor running), clones HEAD into a fresh
temporary folder, runs `dvc repro` there (this venv's tools first on PATH, OMP_NUM_THREADS
and OMP_WAIT_POLICY unset, so params.yaml decides) and times it. The competitor is one Python
process spinning a busy loop: one runnable thread, a core's worth of demand, all the time.
Prints the machine's load before each run, the wall times, loaded over as-is, and the targets:
the default study at most 8 min on two idle cores, at most 1.5x that beside the competitor.

Unit mode: one training of a digits model (`--epochs`, default 5, of the original's recipe) in a fresh process
per policy, alone and beside the competitor, in interleaved rounds; prints each policy's median
seconds and its ratio to the old policy alone, measured in the same run.

Run it on an otherwise idle machine: anything else running counts as load (the figures say how much).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tasks.adapters.layout import PARAMS_FILE

ROOT = Path(__file__).resolve().parents[1]
IDLE_TARGET_MINUTES = 8.0
LOADED_TARGET_RATIO = 1.5
COMPETITOR = "one Python process spinning a busy loop (one runnable thread, a core's worth of demand)"
# What the run of a stage decides by itself: the environment's thread settings are dropped.
DROPPED = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment with the venv's tools first on PATH, telemetry off and no thread settings."""
    env = {key: value for key, value in os.environ.items() if key not in DROPPED}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1", DO_NOT_TRACK="true")
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def load_line() -> str:
    """The machine's load right now (benchmarks/machine.py's measure, over one second)."""
    from machine import cpu_busy_share  # imports torch: never before a unit child has set its wait policy

    cores, busy = os.cpu_count() or 1, cpu_busy_share()
    average = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    share = "n/a" if busy is None else f"{busy:.0%} busy ({busy * cores:.1f} of {cores} cores)"
    return f"{share}, load average {average}"


class Competitor:
    """The competing busy process, started on entry and stopped on exit."""

    def __enter__(self) -> Competitor:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)  # running before the load is taken
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.terminate()
        self.process.wait()


# --- full mode: dvc repro in a fresh clone ------------------------------------------------------


def policies(old: bool) -> dict[str, dict | None]:
    """Name -> `compute` section to write (None: the clone's own, params.yaml as committed)."""
    chosen: dict[str, dict | None] = {"new": None}
    if old:
        chosen["old"] = {"threads": os.cpu_count() or 1, "wait_policy": "auto"}
    return chosen


def fresh_clone(folder: Path, compute: dict | None) -> Path:
    """HEAD cloned into `folder`, with `compute` written into its params.yaml when given."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True)
    if compute is not None:
        path = folder / PARAMS_FILE
        params = yaml.safe_load(path.read_text())
        params["compute"] = {**params.get("compute", {}), **compute}
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def timed_repro(clone: Path, until: str | None, log: Path) -> float:
    """Seconds `dvc repro [until]` took in `clone`; its output goes to `log`, each line after the
    seconds since the start and a tab, and a failure stops the run."""
    command = ["dvc", "repro", *([until] if until else [])]
    env = clean_env(PREFECT_HOME=str(clone / ".prefect"))
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        for line in process.stdout:
            out.write(f"{time.perf_counter() - started:.1f}\t{line}")
        done = process.wait()
    seconds = time.perf_counter() - started
    if done:
        raise SystemExit(f"`{' '.join(command)}` failed in {clone} (exit {done}); see {log}")
    return seconds


def stage_seconds(log: Path, total: float) -> dict[str, float]:
    """Each stage's seconds in a run's log, from its `Running stage` line to the next (or the end)."""
    starts = []
    for line in log.read_text().splitlines():
        at, _, text = line.partition("\t")
        if text.startswith("Running stage '"):
            starts.append((text.split("'")[1], float(at)))
    ends = [at for _, at in starts[1:]] + [total]
    return {name: end - at for (name, at), end in zip(starts, ends, strict=True)}


def stage_summary(log: Path, total: float) -> str:
    """Seconds per kind of stage (the name before `@`) and the slowest stages."""
    seconds = stage_seconds(log, total)
    kinds: dict[str, list[float]] = {}
    for name, value in seconds.items():
        kinds.setdefault(name.split("@")[0], []).append(value)
    by_kind = sorted(kinds.items(), key=lambda item: -sum(item[1]))
    parts = [f"{kind} {sum(v):.0f} s ({len(v)} x {statistics.median(v):.1f})" for kind, v in by_kind]
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    return (f"  {len(seconds)} stages; by kind, total (count x median): {'; '.join(parts)}"
            f"\n  slowest: {', '.join(f'{name} {value:.0f} s' for name, value in slowest)}")  # fmt: skip


def thread_lines(log: Path) -> list[str]:
    """The stages' `threads: ...` lines of a run, distinct, in order."""
    seen: dict[str, None] = {}
    for line in log.read_text().splitlines():
        line = line.partition("\t")[2]
        if line.startswith("threads: "):
            seen.setdefault(line.split(" (")[0] + " (" + line.split("; ")[-1], None)
    return list(seen)


def full(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="study-load-"))
    slice_ = f"dvc repro {args.until}" if args.until else "dvc repro (the default study, every stage)"
    print(f"{slice_}, from fresh clones of HEAD in {work}\ncompetitor: {COMPETITOR}", flush=True)
    results: dict[str, dict[str, float]] = {}
    for name, compute in policies(args.old).items():
        for condition in ("as is", "loaded"):
            clone = fresh_clone(work / f"{name.replace('.', '-')}-{condition.replace(' ', '-')}", compute)
            log = clone.with_suffix(".log")
            if condition == "loaded":
                with Competitor():
                    print(f"[{name}, {condition}] load before (competitor running): {load_line()}", flush=True)
                    seconds = timed_repro(clone, args.until, log)
            else:
                print(f"[{name}, {condition}] load before: {load_line()}", flush=True)
                seconds = timed_repro(clone, args.until, log)
            results.setdefault(name, {})[condition] = seconds
            print(f"[{name}, {condition}] {seconds:.0f} s ({seconds / 60:.1f} min); stages chose: "
                  f"{'; '.join(thread_lines(log)) or 'no threads line'}\n{stage_summary(log, seconds)}",
                  flush=True)  # fmt: skip
    print(f"\n== summary: {slice_} ==")
    for name, times in results.items():
        ratio = times["loaded"] / times["as is"]
        print(f"{name:12} as is {times['as is'] / 60:5.1f} min   beside the competitor "
              f"{times['loaded'] / 60:5.1f} min   loaded / as is {ratio:.2f}")  # fmt: skip
    new = results["new"]
    if not args.until:
        print(f"targets: as is <= {IDLE_TARGET_MINUTES:.0f} min on two idle cores: {new['as is'] / 60:.1f} min; "
              f"loaded <= {LOADED_TARGET_RATIO}x as is: {new['loaded'] / new['as is']:.2f}x")  # fmt: skip
    if "old" in results:
        old = results["old"]
        print(f"old / new: as is {old['as is'] / new['as is']:.2f}, beside the competitor "
              f"{old['loaded'] / new['loaded']:.2f}")  # fmt: skip
    print(f"logs: {work}/*.log")


# --- unit mode: one digits training per policy -------------------------------------------------

UNIT_POLICIES = {  # name -> (compute.threads, compute.wait_policy)
    "old (2 threads, default wait)": ("2", "auto"),
    "2 threads, passive wait": ("2", "passive"),
    "2 threads, active wait": ("2", "active"),
    "1 thread": ("1", "auto"),
    "auto, passive wait": ("auto", "passive"),
    "auto, default wait (new default)": ("auto", "auto"),
}


def unit_child(threads: str, wait_policy: str, epochs: int) -> None:
    """In a fresh process: configure as a stage does, train a digits model, print its seconds."""
    from unlearn.threads import configure_threads

    choice = configure_threads(int(threads) if threads.isdigit() else threads, wait_policy)
    from dataclasses import replace

    import torch

    from unlearn.data import load_dataset
    from unlearn.original import new_model, original_config
    from unlearn.presets import get_preset
    from unlearn.train import fit

    preset, bundle = get_preset("digits"), load_dataset("digits")
    model, config = new_model(preset, bundle, 0), replace(original_config(preset, bundle, 0), epochs=epochs)
    started = time.perf_counter()
    fit(model, bundle.train, config, torch.device("cpu"))
    print(f"{time.perf_counter() - started:.3f}\t{choice.line()}")


def unit_run(threads: str, wait_policy: str, epochs: int) -> tuple[float, str]:
    done = subprocess.run([sys.executable, __file__, "--child", threads, wait_policy, str(epochs)], env=clean_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    seconds, line = done.stdout.strip().splitlines()[-1].split("\t")
    return float(seconds), line


def unit(args: argparse.Namespace) -> None:
    print(f"one digits training ({args.epochs} epochs of the original's recipe) per fresh process, "
          f"{args.repeats} interleaved rounds"
          f"\ncompetitor: {COMPETITOR}", flush=True)  # fmt: skip
    seconds: dict[tuple[str, str], list[float]] = {}
    chose: dict[tuple[str, str], str] = {}
    for round_ in range(args.repeats):
        for condition in ("alone", "loaded"):
            if condition == "loaded":
                competitor = Competitor().__enter__()
            print(f"round {round_ + 1}, {condition}: load before {load_line()}", flush=True)
            try:
                for name, (threads, wait_policy) in UNIT_POLICIES.items():
                    value, chose[name, condition] = unit_run(threads, wait_policy, args.epochs)
                    seconds.setdefault((name, condition), []).append(value)
                    print(f"  {name:34} {value:6.2f} s  {chose[name, condition]}", flush=True)
            finally:
                if condition == "loaded":
                    competitor.__exit__(None, None, None)
    base = statistics.median(seconds["old (2 threads, default wait)", "alone"])
    print(f"\n== summary: median seconds of one digits training; ratio to the old policy alone ({base:.2f} s) ==")
    for name in UNIT_POLICIES:
        alone, loaded = (statistics.median(seconds[name, c]) for c in ("alone", "loaded"))
        print(f"{name:34} alone {alone:6.2f} s ({alone / base:.2f})   beside the competitor {loaded:6.2f} s "
              f"({loaded / base:.2f}; loaded/alone {loaded / alone:.2f})")  # fmt: skip
        print(f"{'':34} chose: alone {chose[name, 'alone']}; loaded {chose[name, 'loaded']}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        unit_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until", metavar="STAGE", help="run `dvc repro STAGE` (it and what it needs) only")
    parser.add_argument("--old", action="store_true", help="also run with the old policy (threads: cores)")
    parser.add_argument("--unit", action="store_true", help="one digits training per policy instead of the study")
    parser.add_argument("--repeats", type=int, default=3, help="unit mode: interleaved rounds")
    parser.add_argument("--epochs", type=int, default=5, help="unit mode: epochs of each training")
    args = parser.parse_args()
    unit(args) if args.unit else full(args)


if __name__ == "__main__":
    main()
