"""`tasks.stages.server`: a stage handed to the preloaded server runs as `python -m` would run it."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tasks.adapters.layout import PARAMS_FILE
from tasks.stages import server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not server.supported(), reason="the stage server needs Linux")

# A stage of the test's own: what it saw, on its streams, and the exit status it was asked for.
PROBE = """
import os, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "token", os.environ["PROBE_TOKEN"], "stdin", sys.stdin.read())
print("parent", os.getppid(), "main", __name__, file=sys.stderr)
import torch
print("torch seed", torch.initial_seed(), file=sys.stderr)
if sys.argv[1] == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""
CLIENT = "import sys; from tasks.stages.server import run_served; sys.exit(run_served('probe_stage', sys.argv[1:]))"


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment, the probe importable, and a token of its own: the test's own server."""
    (tmp_path / "probe_stage.py").write_text(PROBE)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "PROBE_TOKEN": uuid.uuid4().hex, **extra}


def served(env: dict, *args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLIENT, *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_served_stage_gets_its_arguments_folder_environment_streams_and_exit_status(tmp_path):
    env, work = environment(tmp_path), tmp_path / "work"
    work.mkdir()
    first = served(env, "3", "x y", cwd=work, stdin="from stdin")
    assert first.returncode == 3, first.stderr
    assert first.stdout == f"argv ['3', 'x y'] cwd {work} token {env['PROBE_TOKEN']} stdin from stdin\n"
    parent = first.stderr.split("parent ")[1].split()[0]
    assert "main __main__" in first.stderr
    second = served({**env, "DVC_STAGE": "another"}, "0", cwd=tmp_path)  # a per-command variable: same server
    assert second.returncode == 0, second.stderr
    assert second.stderr.split("parent ")[1].split()[0] == parent  # one server forked both
    seeds = [done.stderr.split("torch seed ")[1].split()[0] for done in (first, second)]
    assert seeds[0] != seeds[1]  # each child draws its own, as separate processes do
    connection = server._connect(server.server_address(server.server_key(env)))
    assert connection is not None
    connection.close()


def test_the_stage_ends_when_its_stage_process_is_killed(tmp_path):
    env, pid_file = environment(tmp_path), tmp_path / "pid"
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    client = subprocess.Popen([sys.executable, "-c", CLIENT, "sleep", str(pid_file)], env=env, cwd=tmp_path, **quiet)
    deadline = time.monotonic() + 300
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and client.poll() is None, "the probe did not start"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert child != client.pid
    client.send_signal(signal.SIGTERM)
    client.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(child):
        assert time.monotonic() < deadline, "the stage outlived its stage process"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped by the server, does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_server_that_cannot_start_says_why_and_nothing_runs_there(tmp_path):
    broken = tmp_path / "broken" / "mlflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this mlflow is broken on purpose')")
    env = environment(tmp_path)
    env["PYTHONPATH"] = f"{broken.parent}:{env['PYTHONPATH']}"
    done = subprocess.run([sys.executable, "-c", "from tasks.stages.server import run_served; "
                           "print(run_served('probe_stage', ['0']))"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "None\n"  # the caller runs the stage itself
    assert done.stderr.strip().splitlines() == [
        "stage server: did not start (ImportError: this mlflow is broken on purpose); the stage runs in its own process"
    ]


def test_the_key_follows_sources_and_environment_but_not_per_command_variables(tmp_path):
    env = {"A": "1", "DVC_STAGE": "train"}
    key = server.server_key(env)
    assert server.server_key({"A": "1", "DVC_STAGE": "unlearn@forget_0-ga", "PWD": "/x"}) == key
    assert server.server_key({"A": "2", "DVC_STAGE": "train"}) != key
    source = ROOT / "tasks" / "stages" / "server.py"
    stat = source.stat()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert server.server_key(env) != key  # edited code: a server with the old imports is not reused
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("stage_server", [True, False])
def test_a_stage_command_is_served_as_params_yaml_says_with_its_wait_policy_error_and_status(tmp_path, stage_server):
    params = yaml.safe_load((ROOT / PARAMS_FILE).read_text())
    params["compute"].update(stage_server=stage_server, wait_policy="passive")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROBE_TOKEN": uuid.uuid4().hex, "OMP_WAIT_POLICY": "ACTIVE"}
    command = [sys.executable, "-m", "tasks.stages.split", "--params", "params.yaml", "--scenario", "nope"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    threads, error = done.stderr.strip().splitlines()[-2:]
    assert threads.startswith("threads: ") and threads.endswith("passive wait)")  # in effect: torch loaded after
    assert error == "error: split.scenarios has no scenario 'nope'; known: class_wise, random"
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # as the stage process set it from params.yaml before it asked
    started = server._connect(server.server_address(server.server_key(env)))
    assert (started is not None) == stage_server
    if started is not None:
        started.close()
