"""The container files: the Dockerfile passes hadolint, compose.yaml is complete and holds no secret.

Docker itself is not needed (nor run): the image is linted, the compose file is read as YAML.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# `${VAR}`, `${VAR:-default}`, `${VAR?error}` and bare `$VAR`; `$$` is compose's escaped dollar.
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|AUTH_STRING|TOKEN", re.IGNORECASE)
CREDENTIAL_KEY = re.compile(rf"{SECRET_KEY.pattern}|ACCESS_KEY|_USER$", re.IGNORECASE)
URI_USERINFO = re.compile(r"://(?P<user>[^/@\s]*):(?P<password>[^/@\s]*)@")
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def one_shot_services() -> set[str]:
    """Services others wait to *complete* (init jobs), as opposed to long-running ones."""
    return {
        name
        for service in services().values()
        for name, condition in (service.get("depends_on") or {}).items()
        if isinstance(condition, dict) and condition.get("condition") == "service_completed_successfully"
    }


def variables(text: str) -> set[str]:
    """The variables a compose text interpolates (escaped `$$` excluded)."""
    return {braced or bare for braced, bare in VARIABLE.findall(text.replace("$$", ""))}


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (compose allows a list of KEY=VALUE too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in joined.splitlines())
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(f"{hadolint} is missing: install the dev extra (pip install -c constraints.txt -e '.[dev]')")
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_every_hadolint_ignore_is_justified_in_the_comment_above_it():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        pragma = re.match(r"#\s*hadolint\s+ignore=(\S+)", line.strip())
        if not pragma:
            continue
        above = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#"):
                break
            above.append(previous)
        for rule in pragma.group(1).split(","):
            assert any(rule in comment for comment in above), f"line {number + 1}: ignore of {rule} not explained"


def test_image_runs_the_cli_as_a_non_root_user_from_pinned_bases():
    instructions = dockerfile_instructions()
    args = dict(
        re.match(r"(\w+)=?(.*)", value).groups() for kind, value in instructions if kind == "ARG"
    )  # fmt: skip
    for kind, value in instructions:
        if kind == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value.split()[0])
            assert re.search(r":[^:]*\d", base) and not base.endswith(":latest"), f"unpinned base {base}"
    final_stage = instructions[max(i for i, (kind, _) in enumerate(instructions) if kind == "FROM") :]
    users = [value for kind, value in final_stage if kind == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["unlearn"]') in final_stage
    installs = [value for kind, value in instructions if kind == "RUN" and "pip install" in value]
    assert installs and all("--constraint constraints.txt" in value for value in installs)
    assert any('".[ops]"' in value for value in installs)
    variant = next(value for kind, value in instructions if kind == "RUN" and "VARIANT" in value)
    assert "cpu)" in variant and "cuda)" in variant


def test_image_env_turns_telemetry_off():
    env_text = " ".join(value for kind, value in dockerfile_instructions() if kind == "ENV")
    for key, value in TELEMETRY_OFF.items():
        assert f"{key}={value}" in env_text, f"Dockerfile ENV lacks {key}={value}"


def test_image_copies_every_package_and_the_dockerignore_lets_them_in():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    packages = [pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]]
    needed = [f"{name}/" for name in packages] + [f"{name}.py" for name in setuptools["py-modules"]]
    needed += ["pyproject.toml", "constraints.txt", project["project"]["readme"]]
    copied = {
        source
        for kind, value in dockerfile_instructions()
        if kind == "COPY" and "--from=" not in value
        for source in value.split()[:-1]
    }
    assert set(needed) <= copied, f"not copied into the image: {sorted(set(needed) - copied)}"
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore, ".dockerignore should be an allowlist (start from `*`)"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert f"!{source}" in ignore, f"COPY {source}: excluded by .dockerignore"


# --- compose.yaml ----------------------------------------------------------------------------


def test_compose_has_the_production_services():
    names = set(services())
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= names
    for name, service in services().items():
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"
        for dependency in service.get("depends_on") or {}:
            assert dependency in names, f"{name} depends on unknown service {dependency}"


def test_every_long_running_service_has_a_health_check():
    one_shots = one_shot_services()
    assert {"create-databases", "create-bucket"} <= one_shots
    for name, service in services().items():
        if name in one_shots:
            assert service.get("restart") == "no", f"one-shot {name} must not restart"
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"{name} runs for good but has no health check"


def test_credentials_are_interpolated_from_the_env_file():
    example = env_example()
    for name, service in services().items():
        for key, value in environment(service).items():
            if CREDENTIAL_KEY.search(key):
                assert VARIABLE.fullmatch(value), f"{name}: {key} must be a ${{...}} reference, not {value!r}"
            for match in URI_USERINFO.finditer(value):
                for part in ("user", "password"):
                    assert VARIABLE.fullmatch(match[part]), f"{name}: {key} holds a literal {part}"
    text = COMPOSE.read_text()
    for key, value in example.items():
        if SECRET_KEY.search(key):
            assert value not in text, f"compose.yaml holds the example secret of {key}"


def test_env_example_defines_every_variable_compose_uses():
    used, defined = variables(COMPOSE.read_text()), set(env_example())
    assert used, "compose.yaml interpolates nothing: credentials must come from .env"
    assert used <= defined, f".env.example lacks {sorted(used - defined)}"


def test_the_real_env_file_is_git_ignored_and_the_example_is_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, timeout=30).returncode == 0

    assert ignored(".env")
    assert not ignored(".env.example")


def test_servers_use_postgresql_and_s3_and_the_worker_their_urls():
    mlflow = environment(services()["mlflow"])
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "MLFLOW_S3_ENDPOINT_URL" in mlflow
    prefect = environment(services()["prefect-server"])
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    worker = environment(services()["worker"])
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["PREFECT_API_AUTH_STRING"] == prefect["PREFECT_SERVER_API_AUTH_STRING"]
    for name in ("mlflow", "prefect-server", "worker"):
        env = environment(services()[name])
        assert all(env.get(key) == value for key, value in TELEMETRY_OFF.items()), f"{name}: telemetry on"


def test_the_worker_command_is_a_real_cli_command():
    from typer.testing import CliRunner

    from cli import app

    example = env_example()
    command = [VARIABLE.sub(lambda m: example[m[1] or m[2]], part) for part in services()["worker"]["command"]]
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--params" in result.output
