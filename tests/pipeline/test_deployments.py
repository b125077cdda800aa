"""Deployments: prefect.yaml and the served deletion-batch deployment agree with params.yaml."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_names_real_flows_and_the_hourly_schedule():
    import importlib

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"deletion-batch", "train-original", "study"} <= set(deployments)
    for deployment in deployments.values():
        module_path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, function))
    batch = deployments["deletion-batch"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert batch["schedules"][0]["cron"] == params["deletion"]["schedule"]
    assert batch["concurrency_limit"] == 1


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
