"""The deletion_batch flow end to end: Prefect's local API, a real MLflow sqlite store, DVC.

One champion is trained and registered for the module; each test gets its own inbox and
ledger (its own params file), so batches do not interfere.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from projects import enter_project, shrunk_params, submit, tool_env

from tasks.adapters import registry, tracking
from tasks.adapters.requests import DeletionRequest, open_inbox
from tasks.production import deletion

pytestmark = pytest.mark.slow
STEPS = ("record", "write_split", "version_split", "unlearn_champion", "evaluate_candidate", "audit_batch",
         "register_candidate", "attach_review", "finish")  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api):
    """A git + DVC project folder with a registered champion; the working folder for the module."""
    monkeypatch = pytest.MonkeyPatch()
    folder = enter_project(tmp_path_factory.mktemp("project"), monkeypatch)
    (folder / "params.yaml").write_text(yaml.safe_dump(shrunk_params()))
    from flows.train_original import train_original

    summary = train_original("params.yaml")
    yield folder, summary
    monkeypatch.undo()


@pytest.fixture
def params_path(project, request) -> str:
    """A params file of this test's own: its inbox and ledger."""
    folder, _ = project
    name = request.node.name.replace("[", "-").replace("]", "")
    params = shrunk_params()
    params["deletion"].update(inbox=f"data/requests/{name}", ledger=f"data/ledger/{name}.csv")
    path = folder / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path.name


def versions_of_batch(batch_id: str):
    name = registry.model_name("digits", "digits_resnet")
    return tracking.client().search_model_versions(f"name = '{name}' and tags.batch_id = '{batch_id}'")


def inbox_of(params_path: str):
    return open_inbox(yaml.safe_load(Path(params_path).read_text())["deletion"]["inbox"])


def test_train_original_registers_a_sparse_champion(project):
    _, summary = project
    champion = registry.version_by_alias(summary["model"], registry.CHAMPION)
    assert str(champion.version) == summary["champion_version"]
    assert champion.tags[registry.PARENT_TAG] == summary["dense_version"]
    assert float(champion.tags[registry.SPARSITY_TAG]) == pytest.approx(0.5, abs=0.001)


def test_happy_path_registers_a_candidate_with_its_lineage(params_path):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-a", ["digits/train/00001", "digits/train/00002"])
    submit(params_path, "req-b", ["digits/train/00003"])
    result = deletion_batch(params_path)
    assert result["status"] == "registered" and sorted(result["requests"]) == ["req-a", "req-b"]
    version = registry.version_by_alias(result["model"], registry.CANDIDATE)
    assert str(version.version) == result["version"]
    assert set(version.tags[registry.REQUEST_IDS_TAG].split(",")) == {"req-a", "req-b"}
    assert version.tags[registry.BATCH_TAG] == result["batch_id"]
    assert version.tags[registry.LEDGER_TAG] and version.tags[registry.PARENT_TAG]
    metrics = registry.version_metrics(version)  # metrics of the logged model, not tags
    assert 0 <= metrics["UA"] <= 100 and "UA_cumulative" in metrics and "metrics.UA" not in version.tags
    logged = tracking.client().get_logged_model(registry.logged_model_id(version))  # it names its version
    assert {"name": version.name, "version": str(version.version)} in json.loads(logged.tags["mlflow.modelVersions"])
    # audited against the champion's pool, kind and size recorded, the review attached
    assert version.tags[registry.DELETION_KIND_TAG] == "sample" and version.tags[registry.FORGET_SAMPLES_TAG] == "3"
    assert version.tags["audit.samples"] == "3" and version.tags["audit.references"] == "4"
    assert (
        version.tags["audit_pool.sha256"]
        == registry.version_by_alias(result["model"], registry.CHAMPION).tags["audit_pool.sha256"]
    )
    assert version.tags[deletion.REVIEW_TAG] in ("promotable", "not promotable")
    assert inbox_of(params_path).status("req-a").state == "done"
    assert Path(f"data/splits/batches/{result['batch_id']}.dvc").is_file()  # versioned with DVC
    # the batch's MLflow run: params, a description, the validation (with Data Docs) and the review
    run = tracking.client().get_run(registry.get_version(result["model"], result["version"]).run_id)
    assert run.data.params["method"] == "ft" and run.data.params["champion_version"] == version.tags["parent_version"]
    assert "method_config.lr" in run.data.params and "Deletion batch" in run.data.tags["mlflow.note.content"]
    logged = {a.path for a in tracking.client().list_artifacts(run.info.run_id, "validation")}
    assert {"validation/data_docs", f"validation/{result['batch_id']}.json"} <= logged
    assert "review/review.md" in {a.path for a in tracking.client().list_artifacts(run.info.run_id, "review")}


def test_a_second_batch_retains_neither_batchs_samples_and_registers(params_path):
    """The retain set of batch 2 lacks batch 1's samples too, and its split still validates."""
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-first", ["digits/train/00020", "digits/train/00021"])
    first = deletion_batch(params_path)
    submit(params_path, "req-second", ["digits/train/00022"])
    second = deletion_batch(params_path)
    assert first["status"] == second["status"] == "registered" and second["requests"] == ["req-second"]
    retain = Path(f"data/splits/batches/{second['batch_id']}/retain.csv").read_text().splitlines()
    assert not {"digits/train/00020", "digits/train/00021", "digits/train/00022"} & {r.split(",")[0] for r in retain}
    cumulative = Path(f"data/splits/batches/{second['batch_id']}/cumulative_forget.csv").read_text()
    assert all(f"digits/train/0002{k}" in cumulative for k in range(3))


def test_bad_request_is_rejected_with_its_reason_and_the_good_ones_go_on(params_path):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-good", ["digits/train/00010"])
    submit(params_path, "req-bad", ["digits/train/99999"])
    result = deletion_batch(params_path)
    assert result["requests"] == ["req-good"]
    inbox = inbox_of(params_path)
    assert inbox.status("req-bad").state == "rejected"
    assert "digits/train/99999" in inbox.rejection_reason("req-bad")
    assert inbox.status("req-good").state == "done"


def test_empty_inbox_ends_quickly_with_nothing_registered(params_path):
    from flows.deletion_batch import deletion_batch

    assert deletion_batch(params_path) == {"status": "empty"}


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_loses_nothing_and_processes_nothing_twice(params_path, step, monkeypatch):
    import flows.deletion_batch as flow_module

    for name in dir(flow_module):  # no retries: the injected crash must end the run
        candidate = getattr(flow_module, name)
        if hasattr(candidate, "with_options") and hasattr(candidate, "retries"):
            monkeypatch.setattr(flow_module, name, candidate.with_options(retries=0))
    submit(params_path, "req-1", ["digits/train/00020", "digits/train/00021"])
    submit(params_path, "req-2", ["digits/train/00022"])

    def crash(*args, **kwargs):
        raise RuntimeError(f"injected crash at {step}")

    with monkeypatch.context() as patch:
        patch.setattr(deletion, step, crash)
        with pytest.raises(RuntimeError, match="injected crash"):
            flow_module.deletion_batch(params_path)
    inbox = inbox_of(params_path)
    assert {inbox.status(r).state for r in ("req-1", "req-2")} <= {"claimed", "pending"}
    result = flow_module.deletion_batch(params_path)
    assert result["status"] == "registered" and result["resumed"] is True
    assert {inbox.status(r).state for r in ("req-1", "req-2")} == {"done"}
    assert len(versions_of_batch(result["batch_id"])) == 1
    assert flow_module.deletion_batch(params_path) == {"status": "empty"}  # nothing left, nothing redone
    ledger = deletion.Ledger.load(yaml.safe_load(Path(params_path).read_text())["deletion"]["ledger"])
    assert sorted(ledger.deleted_ids()) == ["digits/train/00020", "digits/train/00021", "digits/train/00022"]


def test_at_most_one_batch_runs_at_a_time(params_path, monkeypatch):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-x", ["digits/train/00030"])
    spans: list[tuple[str, float]] = []
    original_open, original_finish = deletion.open_batch, deletion.finish

    def open_batch(params, data):
        spans.append(("start", time.monotonic()))
        time.sleep(1.0)  # widen the window in which a second run could slip in
        return original_open(params, data)

    def finish(params, batch):
        original_finish(params, batch)
        spans.append(("end", time.monotonic()))

    monkeypatch.setattr(deletion, "open_batch", open_batch)
    monkeypatch.setattr(deletion, "finish", finish)
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(deletion_batch(params_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert sorted(r["status"] for r in results) == ["empty", "registered"]
    kinds = [kind for kind, _ in sorted(spans, key=lambda span: span[1])]
    assert kinds == ["start", "end", "start"]  # the second run began only after the first ended


# --- hostile input, tampering and crashes (a bad file or a dead run never blocks the next batch) ------


def params_of(params_path: str) -> dict:
    return yaml.safe_load(Path(params_path).read_text())


def test_hostile_entries_are_set_aside_with_reasons_while_a_good_request_is_done(params_path, tmp_path):
    import os

    from flows.deletion_batch import deletion_batch

    inbox_dir = Path(params_of(params_path)["deletion"]["inbox"])
    submit(params_path, "req-good", ["digits/train/00040"])
    pending = inbox_dir / "pending"
    outside = tmp_path / "outside.json"  # a valid request, but outside the inbox: never to be followed
    outside.write_text(DeletionRequest(request_id="req-link", sample_ids=["digits/train/00041"]).model_dump_json())
    (pending / "req-nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (pending / "req-folder.json").mkdir()
    (pending / "req-link.json").symlink_to(outside)
    (pending / "req-zero.json").symlink_to("/dev/zero")
    os.mkfifo(pending / "req-fifo.json")
    (pending / "not a request.txt").write_text("{}")
    huge = DeletionRequest(request_id="req-huge", sample_ids=["digits/train/" + "9" * 200]).model_dump_json()
    (pending / "req-huge.json").write_text(huge)

    result = deletion_batch(params_path)

    assert result["status"] == "registered" and result["requests"] == ["req-good"]
    inbox = inbox_of(params_path)
    assert inbox.status("req-good").state == "done"
    for request_id in ("req-nested", "req-folder", "req-link", "req-zero", "req-fifo", "req-huge"):
        assert inbox.status(request_id).state == "rejected", request_id
        reason = inbox.rejection_reason(request_id)
        assert reason and len(reason.encode()) <= 400, (request_id, reason)
    assert any("not a request.txt" in label for label in result["set_aside"])
    assert not pending.exists() or not list(pending.iterdir())  # nothing left to block a later batch
    assert outside.read_text().startswith("{")  # the link's target is untouched
    ledger = deletion.Ledger.load(params_of(params_path)["deletion"]["ledger"])
    assert ledger.deleted_ids() == {"digits/train/00040"}  # the linked request's sample was not deleted


def test_a_reused_request_id_is_set_aside_and_the_done_record_kept(params_path):
    from flows.deletion_batch import deletion_batch

    submit(params_path, "req-once", ["digits/train/00050"])
    first = deletion_batch(params_path)
    done_record = Path(params_of(params_path)["deletion"]["inbox"]) / "done" / first["batch_id"] / "req-once.json"
    before = done_record.read_bytes()
    again = DeletionRequest(request_id="req-once", sample_ids=["digits/train/00051"])
    (done_record.parents[2] / "pending").mkdir(exist_ok=True)
    (done_record.parents[2] / "pending" / "req-once.json").write_text(again.model_dump_json())
    second = deletion_batch(params_path)
    assert second["status"] == "empty" and any("req-once" in label for label in second["set_aside"])
    assert done_record.read_bytes() == before
    assert inbox_of(params_path).status("req-once").batch_id == first["batch_id"]


def test_a_removed_ledger_row_stops_the_next_batch_before_anything_is_claimed(params_path):
    from flows.deletion_batch import deletion_batch
    from tasks.adapters.ledger import LedgerTamperedError

    submit(params_path, "req-t1", ["digits/train/00060", "digits/train/00061"])
    first = deletion_batch(params_path)
    ledger_file = Path(params_of(params_path)["deletion"]["ledger"])
    ledger_file.write_text("".join(row for row in ledger_file.read_text().splitlines(True) if "00061" not in row))
    submit(params_path, "req-t2", ["digits/train/00062"])
    with pytest.raises(LedgerTamperedError, match=rf"through batch {first['batch_id']} .*1 rows now, 2 recorded"):
        deletion_batch(params_path)
    assert inbox_of(params_path).status("req-t2").state == "pending"


def champion_checkpoint_file(summary: dict) -> Path:
    """Where the artefact store keeps the champion's checkpoint (a local folder in these tests)."""
    from urllib.parse import urlparse

    champion = registry.version_by_alias(summary["model"], registry.CHAMPION)
    model_id = champion.model_id or champion.source.removeprefix("models:/")
    location = tracking.client().get_logged_model(model_id).artifact_location
    (found,) = (Path(urlparse(location).path) / "extra_files").glob("*.pt")
    return found


def test_a_swapped_champion_checkpoint_stops_the_batch_and_it_resumes_once_restored(project, params_path):
    from flows.deletion_batch import deletion_batch
    from tasks.adapters.registry import CheckpointTamperedError

    folder, summary = project
    stored = champion_checkpoint_file(summary)
    original = stored.read_bytes()
    submit(params_path, "req-swap", ["digits/train/00070"])
    try:
        stored.write_bytes((folder / "models/champion/original/seed0.pt").read_bytes())  # the dense original
        with pytest.raises(CheckpointTamperedError, match="was replaced or changed since"):
            deletion_batch(params_path)
        assert not versions_of_batch(inbox_of(params_path).status("req-swap").batch_id)
    finally:
        stored.write_bytes(original)
    result = deletion_batch(params_path)
    assert result["status"] == "registered" and result["resumed"] and result["requests"] == ["req-swap"]


def _cli_process(params_path: str, prefect_home: Path, slow_step: str | None = None):
    """`unlearn batch` in a process of its own on the embedded default (a temporary Prefect API).

    `slow_step` (for the kill test): `registry.register_version` then sleeps, after the model is logged.
    """
    import os
    import sys

    env = {key: value for key, value in tool_env().items() if not key.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1")
    code = "import sys; from cli import app\n"
    if slow_step:
        code += (
            "import time; from pathlib import Path; from tasks.adapters import registry\n"
            "def slow(*a, **k):\n    Path('registering.flag').touch(); time.sleep(600)\n"
            f"registry.{slow_step} = slow\n"
        )
    code += "app(['batch', '--params', sys.argv[1]])\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, params_path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=os.getcwd(),
    )


def test_a_batch_killed_mid_registration_is_resumed_by_the_next_run_with_no_manual_step(params_path, tmp_path):
    """SIGKILL while registering; the next `unlearn batch` takes over within a bounded time."""
    import signal

    home = tmp_path / "prefect-home"
    submit(params_path, "req-k1", ["digits/train/00080", "digits/train/00081"])
    flag = Path("registering.flag")
    flag.unlink(missing_ok=True)
    killed = _cli_process(params_path, home, slow_step="register_version")
    deadline = time.monotonic() + 300
    while not flag.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flag.exists(), killed.communicate()[0] if killed.poll() is not None else "no registration in 300 s"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    flag.unlink()
    batch_id = inbox_of(params_path).status("req-k1").batch_id
    store = tracking.client()
    experiments = [e.experiment_id for e in store.search_experiments()]
    (dead_run,) = store.search_runs(experiments, f"tags.batch_id = '{batch_id}'")
    assert dead_run.info.status == "RUNNING"
    assert store.search_logged_models(experiments, filter_string=f"source_run_id = '{dead_run.info.run_id}'")

    second = _cli_process(params_path, home)
    output, _ = second.communicate(timeout=300)  # bounded: a stuck guard would hang here
    assert second.returncode == 0, output
    assert "deletion batch: registered" in output and "resumed" in output and batch_id in output
    assert inbox_of(params_path).status("req-k1").state == "done"
    assert len(versions_of_batch(batch_id)) == 1
    dead = store.get_run(dead_run.info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["unlearn.interrupted"] == "true"
    assert not store.search_logged_models(experiments, filter_string=f"source_run_id = '{dead_run.info.run_id}'")


def test_a_held_batch_lock_makes_a_second_run_wait_a_bounded_time_naming_the_holder(params_path):
    from flows.deletion_batch import deletion_batch
    from tasks.adapters.batch_lock import BatchLockedError, batch_lock

    ledger = params_of(params_path)["deletion"]["ledger"]
    settings = params_of(params_path)
    settings["deletion"]["lock_timeout_seconds"] = 1
    Path(params_path).write_text(yaml.safe_dump(settings))
    held = batch_lock(ledger, timeout_seconds=1, purpose="test holder")
    with held, pytest.raises(BatchLockedError, match=r"pid \d+ on .* \(test holder\)\); waited 1 s"):
        deletion_batch(params_path)
    settings["deletion"]["lock_timeout_seconds"] = 600  # 1 s can be too short for Prefect's own acquisition
    Path(params_path).write_text(yaml.safe_dump(settings))
    assert deletion_batch(params_path) == {"status": "empty"}  # released with the block


def test_train_original_on_an_empty_registry_leaves_out_every_ledger_sample(project, tmp_path, monkeypatch):
    """A lost registry with a non-empty ledger: the new champion never trains on a deleted sample."""
    from flows.train_original import train_original
    from tasks.adapters.ledger import Ledger
    from tasks.adapters.requests import make_request

    folder, _ = project
    ledger_path = "data/ledger/lost-registry.csv"
    deleted = [f"digits/train/{n:05d}" for n in (90, 91, 92)]
    Ledger.load(ledger_path).extend("batch-old", [make_request(request_id="req-old", sample_ids=deleted)]).save()
    params = shrunk_params()
    params["deletion"].update(ledger=ledger_path, inbox="data/requests/lost-registry")
    Path("params-lost.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")  # the registry is gone
    monkeypatch.setenv("UNLEARN_ARTIFACT_ROOT", str(tmp_path / "fresh-artifacts"))
    summary = train_original("params-lost.yaml")
    assert summary["excluded_samples"] == 3
    champion = registry.version_by_alias(summary["model"], registry.CHAMPION)
    assert (champion.tags[registry.LEDGER_BATCH_TAG], champion.tags[registry.LEDGER_ROWS_TAG]) == ("batch-old", "3")
    assert champion.tags[registry.LEDGER_TAG] == Ledger.load(ledger_path).digest()
    from tasks.adapters.workspace import bundle, load_model
    from unlearn.splits import Manifest

    data = bundle()
    kept = [row for row, sample in enumerate(data.train.ids) if sample not in deleted]
    for path in (folder / "models/champion/original/seed0.pt", folder / "models/champion/pruned/s0.5/seed0.pt"):
        _, checkpoint = load_model(path)
        assert checkpoint.metadata["split_digest"] == Manifest.of(data.train, kept).digest()
    assert deletion.batches_since(Ledger.load(ledger_path), deletion.forgotten_through(champion)) == []


def test_three_requests_in_two_batches_tell_their_true_state_after_the_second_is_promoted(project, params_path):
    """Done is not forgotten: a request is `forgotten` only once the champion descends from a version that forgot it.

    Batch 2 is unlearned from the champion, which had forgotten neither batch, so its version forgets all
    three requests; promoting it (batch 1's version never promoted) leaves the champion's record whole.
    """
    from flows.deletion_batch import deletion_batch
    from tasks.adapters.params import load_params
    from tasks.production.lifecycle import FORGOTTEN, UNLEARNED, request_states
    from tasks.production.promotion import promote

    params = load_params(params_path)
    submit(params_path, "req-one", ["digits/train/00040"])
    submit(params_path, "req-two", ["digits/train/00041", "digits/train/00042"])
    first = deletion_batch(params_path)
    submit(params_path, "req-three", ["digits/train/00043"])
    states = {s.request_id: s.state for s in request_states(params)}
    assert states == {"req-one": UNLEARNED, "req-two": UNLEARNED, "req-three": "pending"}
    second = deletion_batch(params_path)
    name, original = second["model"], registry.version_by_alias(second["model"], registry.CHAMPION)
    v2 = registry.get_version(name, second["version"])
    assert set(v2.tags[registry.REQUEST_IDS_TAG].split(",")) == {"req-one", "req-two", "req-three"}
    assert v2.tags[registry.FORGETS_BATCHES_TAG] == f"{first['batch_id']},{second['batch_id']}"
    before = {s.request_id: s for s in request_states(params)}
    assert before["req-one"].state == UNLEARNED and before["req-one"].unlearned_in == first["version"]
    assert before["req-one"].version == second["version"] and before["req-one"].champion == str(original.version)
    try:
        promote(second["version"], "ana", "batch 2 reviewed", force=True, name=name, gates=params.promote)
        after = {s.request_id: s for s in request_states(params)}
        assert {s.state for s in after.values()} == {FORGOTTEN}
        assert {s.champion for s in after.values()} == {second["version"]}
        assert after["req-one"].reviewer == "ana" and after["req-one"].forced is True
        assert "forgotten by champion v" in after["req-one"].line()
        lineage = registry.history(name)
        assert {"req-one", "req-two", "req-three"} <= {r for entry in lineage for r in entry.request_ids}
        from typer.testing import CliRunner

        from cli import app

        listed = CliRunner().invoke(app, ["request", "list", "--state", FORGOTTEN, "--json", "--params", params_path])
        assert listed.exit_code == 0 and {r["request_id"] for r in json.loads(listed.stdout)} == set(after)
        shown = CliRunner().invoke(app, ["request", "status", "req-two", "--params", params_path])
        assert shown.exit_code == 0 and shown.stdout.startswith(f"req-two: forgotten by champion v{second['version']}")
        unknown = CliRunner().invoke(app, ["request", "status", "req-nobody", "--params", params_path])
        assert unknown.exit_code == 1 and "no request 'req-nobody'" in unknown.stderr
    finally:  # the module's other tests unlearn from the original champion
        tracking.client().set_registered_model_alias(name, registry.CHAMPION, str(original.version))


def test_a_batch_is_restored_from_what_its_registry_version_records_after_the_working_copy_is_wiped(params_path):
    """The batch's .dvc files live on the DVC branch; with them wiped, the cache emptied, the remote brings it back."""
    import shutil

    from flows.deletion_batch import deletion_batch
    from tasks.adapters import dvc_branch
    from tasks.adapters.params import load_params

    params = load_params(params_path)
    submit(params_path, "req-restore", ["digits/train/00050", "digits/train/00051"])
    result = deletion_batch(params_path)
    version = registry.get_version(result["model"], result["version"])
    commit = version.tags[dvc_branch.COMMIT_TAG]
    folder, ledger = Path(f"data/splits/batches/{result['batch_id']}"), Path(params.deletion.ledger)
    files = {path: path.read_bytes() for path in [*sorted(folder.iterdir()), ledger]}
    assert f"{folder}.dvc" in dvc_branch.files_in(commit, "data/splits/batches")
    branch_head = subprocess.run(["git", "rev-parse", dvc_branch.DVC_BRANCH], capture_output=True, text=True)
    # the working branch's index is untouched: nothing staged but what `dvc init` staged
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], capture_output=True, text=True).stdout
    assert branch_head.stdout.strip() and not [line for line in staged.split() if line.endswith(".dvc")]

    shutil.rmtree(folder)
    for path in (Path(f"{folder}.dvc"), ledger, Path(f"{ledger}.dvc")):
        path.unlink()
    shutil.rmtree(".dvc/cache")
    restored = deletion.restore_batch(params, result["batch_id"])
    assert sorted(restored) == sorted([folder, ledger])
    assert {path: path.read_bytes() for path in files} == files
