"""The learning core imports torch and torchvision only, so it runs on a bare GPU machine."""

import subprocess
import sys

MLOPS = ("prefect", "mlflow", "dvc", "great_expectations", "boto3", "pydantic")


def test_importing_the_core_pulls_in_no_mlops_package():
    code = (
        "import sys, pkgutil, importlib, unlearn\n"
        "for m in pkgutil.walk_packages(unlearn.__path__, 'unlearn.'): importlib.import_module(m.name)\n"
        f"print(' '.join(m for m in {MLOPS!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
