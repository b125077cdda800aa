"""Deployments: prefect.yaml and the served deletion-batch and audit-pool deployments agree with params.yaml."""

from pathlib import Path

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
