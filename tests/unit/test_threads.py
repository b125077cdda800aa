"""The thread policy (unlearn.threads, params.yaml's `compute`): the count chosen, the environment a process
and its children get, the wait policy reaching OpenMP in a stage process, and bad values named by key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.adapters.params import parse_params
from unlearn.errors import ConfigError
from unlearn.threads import choose_threads, configure_threads, wait_environment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "cores", "busy", "jobs", "expected"),
    [
        ("auto", 2, 0.05, 1, 2),  # idle: every core
        ("auto", 2, 0.2, 1, 2),  # background noise: still both
        ("auto", 2, 0.3, 1, 1),  # less than 3/4 of the second core free: one thread
        ("auto", 2, 1.0, 1, 1),  # one busy competitor on two cores
        ("auto", 2, 2.5, 1, 1),  # fully loaded: at least one
        ("auto", 2, 0.0, 2, 1),  # two tasks at once share the two cores
        ("auto", 8, 0.0, 2, 4),
        ("auto", 8, 3.0, 2, 2),
        ("auto", 4, 0.0, 1, 4),  # never more than the cores
        (3, 2, 1.5, 1, 3),  # a number is used as given
    ],
)
def test_the_count_follows_cores_load_and_jobs(setting, cores, busy, jobs, expected):
    assert choose_threads(setting, cores, busy, jobs) == expected


def test_wait_policies_set_or_clear_the_environment():
    assert wait_environment("passive") == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert wait_environment("active") == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert wait_environment("auto") == {"OMP_WAIT_POLICY": None}  # the runtime's default


@pytest.mark.parametrize(
    ("compute", "key"),
    [
        ({"threads": "fast"}, "compute.threads"),
        ({"threads": 0}, "compute.threads"),
        ({"threads": True}, "compute.threads"),
        ({"threads": "2"}, "compute.threads"),
        ({"wait_policy": "lazy"}, "compute.wait_policy"),
        ({"spin": True}, "compute.spin"),
    ],
)
def test_a_bad_compute_value_names_its_key(compute, key):
    with pytest.raises(ConfigError, match=rf"^params: {key}: ") as error:
        parse_params({"compute": compute})
    assert "\n" not in str(error.value)


def test_the_shipped_params_and_the_defaults_agree():
    shipped = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).compute
    assert (shipped.threads, shipped.wait_policy) == ("auto", "auto")
    assert parse_params({}).compute == shipped


def test_configure_threads_rejects_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match="compute.threads: must be auto or a positive integer, got -1"):
        configure_threads(-1)
    with pytest.raises(ConfigError, match="compute.wait_policy: must be one of auto, passive, active"):
        configure_threads(1, "spin")


def child(code: str, cwd: Path = ROOT, **env: str) -> list[str]:
    """Run `code` in a fresh Python without the parent's thread settings; its stdout's words."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_child_gets_the_threads_and_the_wait_policy_before_torch_loads():
    words = child(
        "import os, sys; from unlearn.threads import configure_threads\n"
        "assert 'torch' not in sys.modules\n"
        "choice = configure_threads(1, 'passive')\n"
        "import torch\n"
        "grandchild = os.popen(sys.executable + ' -c \"import os; print(os.environ[chr(79)+\\'MP_WAIT_POLICY\\'])\"')\n"
        "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], choice.wait_in_effect, grandchild.read())"
    )
    assert words == ["1", "PASSIVE", "True", "PASSIVE"]  # the grandchild inherits the policy


def test_with_torch_loaded_first_the_count_holds_and_the_line_says_the_wait_does_not():
    words = child(
        "import torch; from unlearn.threads import configure_threads\n"
        "choice = configure_threads(1, 'passive')\n"
        "print(torch.get_num_threads(), choice.wait_in_effect, '|', choice.line())"
    )
    assert words[:3] == ["1", "False", "|"]
    assert "for child processes: torch loaded first" in " ".join(words)


def test_auto_takes_omp_num_threads_from_the_environment():
    words = child(
        "from unlearn.threads import configure_threads; c = configure_threads('auto', 'auto'); "
        "import torch; print(torch.get_num_threads(), c.setting, c.busy)",
        OMP_NUM_THREADS="1",
    )
    assert words == ["1", "OMP_NUM_THREADS", "None"]


def test_auto_measures_the_machine_and_logs_why():
    words = child(
        "from unlearn.threads import configure_threads, usable_cores\n"
        "c = configure_threads('auto', 'passive', jobs=1)\n"
        "import torch; print(torch.get_num_threads(), c.threads, usable_cores(), c.busy is not None, '|', c.line())"
    )
    count, chosen, cores, measured = int(words[0]), int(words[1]), int(words[2]), words[3]
    assert count == chosen and 1 <= count <= cores and measured == "True"
    line = " ".join(words[5:])
    assert line.startswith(f"threads: {count} (auto: {cores} cores, ")
    assert line.endswith("busy elsewhere, 1 job; passive wait)")


SPIN_CHECK = """
import sys
sys.argv[1:] = ["--params", "params.yaml"]  # as `python -m tasks.stages.<stage> --params params.yaml` sees them
import tasks.stages  # the stages' package: sets the wait policy before the stage module imports torch
assert "torch" not in sys.modules
import tasks.stages.entry, time, torch
from tasks.adapters.params import load_params
from unlearn.threads import configure_threads
compute = load_params("params.yaml").compute
choice = configure_threads(compute.threads, compute.wait_policy)
a, b = torch.randn(1_000_000), torch.randn(1_000_000)
for _ in range(20):
    a.add_(b)  # parallel regions of 2 OpenMP threads
started = time.process_time()
time.sleep(1.0)  # idle: the second thread sleeps (passive) or spins (active)
print(choice.wait_in_effect, time.process_time() - started)
"""


@pytest.mark.parametrize("policy", ["passive", "active"])
def test_a_stage_process_starts_openmp_with_the_params_wait_policy(tmp_path, policy):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compute": {"threads": 2, "wait_policy": policy}}))
    in_effect, idle_cpu = child(SPIN_CHECK, cwd=tmp_path)
    assert in_effect == "True"
    if policy == "passive":
        assert float(idle_cpu) < 0.02, f"an idle passive thread used {idle_cpu} s of CPU in 1 s"
    else:  # a spinning thread burns CPU while the process sleeps (even when sharing its core)
        assert float(idle_cpu) > 0.05, f"an idle active thread used only {idle_cpu} s of CPU in 1 s"


@pytest.mark.parametrize(
    ("argv", "compute", "expected"),
    [
        (["--params", "other.yaml"], {"wait_policy": "active"}, "ACTIVE"),
        (["study", "--params=other.yaml"], {"wait_policy": "auto"}, "unset"),  # the runtime's default
        (["--params", "other.yaml"], {"wait_policy": "passive"}, "PASSIVE"),
        (["--params", "other.yaml"], {}, "unset"),  # the default: auto
        (["--params", "other.yaml"], {"wait_policy": "lazy"}, "SPIN"),  # left alone: the params check names it
        (["--params", "missing.yaml"], {}, "SPIN"),
    ],
)
def test_the_stages_and_the_cli_read_the_wait_policy_from_the_params_they_are_given(tmp_path, argv, compute, expected):
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"compute": compute}))
    words = child(  # no params.yaml in the folder: importing the package (with argv ['-c']) leaves SPIN alone
        f"import os, sys; from tasks.stages import wait_policy_before_torch; wait_policy_before_torch({argv!r})\n"
        "print(os.environ.get('OMP_WAIT_POLICY', 'unset'), 'torch' in sys.modules)",
        cwd=tmp_path,
        OMP_WAIT_POLICY="SPIN",
    )
    assert words == [expected, "False"]


def test_flow_tasks_share_the_free_cores_among_the_tasks_running_at_once(monkeypatch):
    """flows.deployments.thread_policy: each task sets torch's threads in its own thread (OpenMP's count is per
    thread), sharing the free cores with the tasks running beside it in the process."""
    import threading

    import torch

    import unlearn.threads
    from flows.deployments import thread_policy

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # restored after the test: configure_threads writes it
    monkeypatch.setattr(unlearn.threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(unlearn.threads, "busy_cores", lambda: 0.0)  # an idle machine of two cores
    params = parse_params({})
    both_running = threading.Barrier(2, timeout=30)
    seen: dict[str, int] = {}

    @thread_policy
    def task_body(params, name: str, wait: bool) -> None:
        seen[f"{name} chose"] = torch.get_num_threads()
        if wait:
            both_running.wait()  # hold until the other task has started too

    alone = threading.Thread(target=task_body, args=(params, "alone", False))
    alone.start()
    alone.join()
    pair = [threading.Thread(target=task_body, args=(params, name, True)) for name in ("first", "second")]
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join()
    assert seen["alone chose"] == 2  # both cores
    assert sorted([seen["first chose"], seen["second chose"]]) == [1, 2]  # the second shares with the first
    assert torch.get_num_threads() == 1  # the test's own thread kept its setting (tests/conftest.py)
