"""`tasks.stages.entry.stage_main`: a stage process ends as a normal exit would, less the interpreter's teardown."""

import subprocess
import sys
from pathlib import Path

from tasks.adapters.layout import PARAMS_FILE
from tasks.stages.entry import stage_main

ROOT = Path(__file__).resolve().parents[2]

# A stage process as `python -m tasks.stages.<stage>` makes it: a `tasks` module as __main__.
STAGE = """
import atexit, importlib.machinery, sys, threading, time
sys.modules["__main__"].__spec__ = importlib.machinery.ModuleSpec("tasks.stages.example", None)
from tasks.stages.entry import stage_main
out = sys.argv.pop(1)

def run(params):
    atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
    def late():
        time.sleep(0.5)
        open(out + ".thread", "w").write("joined")
    threading.Thread(target=late).start()
    print("buffered, no newline", end="")
    sys.stdout = open(out + ".stdout", "w")  # a buffered stream of the stage's own
    print("written", end="")

stage_main("example", run)
open(out + ".after", "w").write("stage_main returned")
"""


def test_a_stage_process_exits_0_after_its_threads_atexit_handlers_and_buffered_output(tmp_path):
    out = tmp_path / "probe"
    done = subprocess.run([sys.executable, "-c", STAGE, str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("buffered, no newline")
    assert Path(f"{out}.stdout").read_text() == "written"
    assert Path(f"{out}.thread").read_text() == "joined"
    assert Path(f"{out}.atexit").read_text() == "ran"
    assert not Path(f"{out}.after").exists()  # the process ended in stage_main


def test_called_in_process_stage_main_returns(monkeypatch):
    calls = []
    monkeypatch.setattr("sys.argv", ["example", "--params", str(ROOT / PARAMS_FILE)])
    stage_main("example", lambda params: calls.append(params.train.seeds))
    assert calls and calls[0]
