"""benchmarks/gpu_check.sh: its CPU path (--cpu, tiny sizes) end to end; without CUDA it refuses in one line.

The script runs where prefect, mlflow and dvc are absent: every run here puts stand-ins for them
first on PYTHONPATH that record the attempt and raise ImportError, as on a bare GPU machine.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # two runs of the script: ~20 s on 2 idle cores, most of it importing torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
MLOPS = ("prefect", "mlflow", "dvc")
ABSENT = """import os
with open(os.environ["GPU_CHECK_IMPORT_LOG"], "a") as log:
    log.write(__name__ + "\\n")
raise ImportError(f"{__name__} is not installed on a bare GPU machine")
"""


def run_script(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`bash benchmarks/gpu_check.sh ARGS` with the MLOps packages made absent; the run and what tried them."""
    absent = folder / "absent"
    absent.mkdir()
    for name in MLOPS:
        (absent / f"{name}.py").write_text(ABSENT)
    attempts = folder / "import-attempts.txt"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(absent),
        "OMP_NUM_THREADS": "1",
        "GPU_CHECK_IMPORT_LOG": str(attempts),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    tried = attempts.read_text().split() if attempts.exists() else []
    return result, tried


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    return run_script(tmp_path_factory.mktemp("gpu-check-cpu"), "--cpu")


def test_cpu_path_measures_both_loops_and_projects_retrain(cpu_run):
    result, _ = cpu_run
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()

    def one(start: str, *parts: str) -> str:
        found = [line for line in lines if line.lstrip().startswith(start) and all(part in line for part in parts)]
        assert len(found) == 1, (start, parts, result.stdout)
        return found[0]

    def speed(line: str) -> float:
        return float(line.split(" : ")[1].split(" images/s")[0])

    assert speed(one("DataLoader(TensorDataset) loop", "images/s")) > 0
    assert speed(one("unlearn fit", "eager", "images/s")) > 0
    assert "skipped (--cpu" in one("unlearn fit", "torch.compile")
    assert float(one("ratio fit eager / DataLoader loop:").split(": ")[1].rstrip("x")) > 0
    # the preset's 182 epochs over its 45,000 training images (50,000 less the 10% holdout)
    projection = one("projected cifar10 Retrain")
    assert "182 epochs x 45,000 images" in projection
    projected = lines[lines.index(projection) + 1 :][:2]
    assert projected[0].lstrip().startswith("DataLoader") and projected[1].lstrip().startswith("unlearn fit")
    assert all(line.endswith(" s)") for line in projected), result.stdout
    assert "gpu_check done" in lines[-1]


def test_cpu_path_prints_the_machine_and_runs_the_cuda_tests(cpu_run):
    result, _ = cpu_run
    assert f"torch {torch.__version__}, CUDA" in result.stdout
    assert "== 2. CUDA tests" in result.stdout
    # pytest ran tests/unit/test_cuda.py: skipped without a GPU, run with one
    assert ("2 skipped" if not torch.cuda.is_available() else "2 passed") in result.stdout


def test_cpu_path_imports_no_mlops_package(cpu_run):
    result, tried = cpu_run
    assert tried == []  # nothing (the measurement, pytest, its conftest) even tried to import them
    assert "MLOps packages imported: none (checked prefect, mlflow, dvc)" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run")
def test_without_cuda_it_exits_non_zero_with_one_line(tmp_path):
    result, tried = run_script(tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "no CUDA device" in message[0] and "--cpu" in message[0], result.stderr
    assert tried == []
