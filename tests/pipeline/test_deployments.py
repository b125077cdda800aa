"""Deployments: prefect.yaml and the served deletion-batch and audit-pool deployments agree with params.yaml."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_names_real_flows_and_the_hourly_schedule():
    import importlib

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"deletion-batch", "audit-pool", "train-original", "study"} <= set(deployments)
    for deployment in deployments.values():
        module_path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, function))
    batch = deployments["deletion-batch"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert batch["schedules"][0]["cron"] == params["deletion"]["schedule"]
    assert batch["concurrency_limit"] == 1


def test_prefect_yaml_audit_pool_rebuilds_only_a_stale_pool_daily():
    from flows.audit_pool import audit_pool
    from flows.deployments import AUDIT_POOL_SCHEDULE

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = next(d for d in config["deployments"] if d["name"] == "audit-pool")
    assert pool["entrypoint"] == "flows/audit_pool.py:audit_pool"
    assert audit_pool.name == "audit-pool"
    assert pool["parameters"] == {"params_path": "params.yaml", "if_stale": True}
    assert pool["schedules"] == [{"cron": AUDIT_POOL_SCHEDULE, "timezone": "UTC"}]
    assert AUDIT_POOL_SCHEDULE == "30 3 * * *"  # daily
    assert pool["concurrency_limit"] == 1


def test_served_deployment_carries_the_cron_schedule_and_single_flight(tmp_path):
    from flows.deployments import deletion_batch_deployment

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["deletion"]["schedule"] = "*/15 * * * *"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    deployment = deletion_batch_deployment(str(path))
    assert deployment.name == "deletion-batch"
    assert deployment.schedules[0].schedule.cron == "*/15 * * * *"
    assert deployment.parameters == {"params_path": str(path)}
    assert deployment.concurrency_limit == 1


def test_served_audit_pool_deployment_is_daily_and_if_stale(tmp_path):
    import importlib

    from flows.deployments import AUDIT_POOL_SCHEDULE, audit_pool_deployment

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    deployment = audit_pool_deployment(str(path))
    assert deployment.name == "audit-pool"
    assert deployment.flow_name == "audit-pool"
    assert deployment.schedules[0].schedule.cron == AUDIT_POOL_SCHEDULE
    assert deployment.parameters == {"params_path": str(path), "if_stale": True}
    assert deployment.concurrency_limit == 1
    module_path, function = deployment.entrypoint.rsplit(".", 1)  # by module path: flows.audit_pool.audit_pool
    assert getattr(importlib.import_module(module_path), function).name == "audit-pool"


def test_serve_serves_both_scheduled_deployments(monkeypatch):
    import flows.deployments as deployments

    served = []
    monkeypatch.setattr(deployments, "serve", lambda *given: served.extend(given))
    deployments.serve_deletion_batch(str(ROOT / "params.yaml"))
    assert [deployment.name for deployment in served] == ["deletion-batch", "audit-pool"]
    assert all(deployment.schedules for deployment in served)


def pull_step():
    """prefect.yaml's one pull step, resolved as Prefect's step runner resolves it."""
    from prefect.utilities.importtools import import_object

    (step,) = yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    ((name, inputs),) = step.items()
    return import_object(name), inputs


def test_prefect_yaml_pull_step_enters_the_folder_unlearn_project_dir_names(tmp_path, monkeypatch):
    from flows.deployments import enter_project_dir

    step, inputs = pull_step()
    assert step is enter_project_dir and inputs == {}
    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    (project / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNLEARN_PROJECT_DIR", str(project))
    assert step(**inputs) == {"directory": str(project)}
    assert Path.cwd() == project


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "UNLEARN_PROJECT_DIR is not set"),
        ("  ", "UNLEARN_PROJECT_DIR is not set"),
        ("{missing}", "UNLEARN_PROJECT_DIR={missing} is no folder on this worker"),
        ("{empty}", "UNLEARN_PROJECT_DIR={empty} has no params.yaml and no flows"),
    ],
)
def test_a_missing_or_wrong_unlearn_project_dir_is_one_line_naming_the_setting(value, says, tmp_path, monkeypatch):
    from unlearn.errors import ConfigError

    step, inputs = pull_step()
    places = {"missing": tmp_path / "nowhere", "empty": tmp_path}
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("UNLEARN_PROJECT_DIR", raising=False)
    else:
        monkeypatch.setenv("UNLEARN_PROJECT_DIR", value.format(**places))
    with pytest.raises(ConfigError) as raised:
        step(**inputs)
    assert str(raised.value).startswith(says.format(**places))
    assert "\n" not in str(raised.value)
    assert Path.cwd() == tmp_path  # nothing changed


def test_prefect_yaml_documents_the_worker_environment():
    comments = "\n".join(line for line in (ROOT / "prefect.yaml").read_text().splitlines() if line.startswith("#"))
    for variable in ("UNLEARN_PROJECT_DIR", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3",
                     "UNLEARN_DEVICE"):  # fmt: skip
        assert variable in comments, variable


def test_the_flow_modules_send_the_project_loggers_to_prefect_once_and_only_inside_runs(recwarn):
    import logging

    from prefect.logging.handlers import APILogHandler

    import flows.deletion_batch  # noqa: F401 - importing a flow module attaches the handler
    from flows.deployments import PROJECT_LOGGERS, capture_project_logs

    capture_project_logs()  # again: no second handler
    for name in PROJECT_LOGGERS:
        handlers = [h for h in logging.getLogger(name).handlers if isinstance(h, APILogHandler)]
        assert len(handlers) == 1, name
    logging.getLogger("tasks.production.deletion").warning("outside any run")  # no flow run to file it under
    assert not [w for w in recwarn if "without a flow run id" in str(w.message)]
