"""Data tier: every saved validation is stored in the GX context (suites, results) and shown in Data Docs."""

import html
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.adapters import layout
from tasks.adapters.expectations import (
    _CONTEXT_CONFIG,
    PARTS,
    Reference,
    batch_data_docs,
    data_context,
    data_docs,
    expected_for,
    plan_checks,
    suite_name,
    validate_against,
)
from tasks.adapters.params import Scenario
from unlearn.splits import Manifest, class_wise

ROOT = Path(__file__).resolve().parents[2]
CLASS_WISE = Scenario(kind="class_wise", classes=[0])


@pytest.fixture(scope="module")
def class_split(digits):
    return class_wise(digits, [0])


def _text(path: Path) -> str:
    """A page's text, tags dropped and entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", path.read_text())))


def _publish(split, digits, root: Path, name: str = "cw", scenario=CLASS_WISE):
    report = validate_against(split, digits, scenario, name)
    report.save(root / "reports" / f"{name}.json", gx_root=root / "gx")
    return report, data_docs(name, root / "gx")


@pytest.fixture(scope="module")
def published(class_split, digits, tmp_path_factory):
    """A passing validation of scenario `cw`, saved to a fresh context: (the folder, its report, its docs)."""
    root = tmp_path_factory.mktemp("published")
    return root, *_publish(class_split, digits, root)


def test_the_suite_is_stored_and_loads(published, class_split, digits):
    root, _, _ = published
    reference = Reference.of(digits)
    planned = plan_checks(reference, expected_for(class_split, reference, CLASS_WISE))
    context = data_context(root / "gx")
    for part in PARTS:
        stored = root / "gx" / "expectations" / "cw" / f"{part}.json"
        assert json.loads(stored.read_text())["name"] == suite_name("cw", part) == f"cw.{part}"
        suite = context.suites.get(suite_name("cw", part))
        assert sorted(e.description for e in suite.expectations) == sorted(
            check.description for check in planned if check.part == part
        )
    assert context.variables.config.analytics_enabled is False


def test_data_docs_show_every_expectation_of_the_validation(published):
    root, report, docs = published
    assert docs.index == root / "gx" / layout.DATA_DOCS.relative_to(layout.GX_CONTEXT) / "index.html"
    assert docs.site == docs.index.parent and docs.index.is_file()
    index = docs.index.read_text()
    assert set(docs.pages) == set(docs.suites) == set(docs.results) == set(PARTS)
    for part in PARTS:
        assert suite_name("cw", part) in index
        assert docs.pages[part].relative_to(docs.site).as_posix() in index
        page, suite_page = _text(docs.pages[part]), _text(docs.suites[part])
        assert f"Expectation Suite: {suite_name('cw', part)}" in page and "Status: Succeeded" in page
        for result in report.results:
            if result.part == part:
                assert result.description in page and result.description in suite_page
        stored = json.loads(docs.results[part].read_text())
        assert stored["success"] is True and stored["meta"]["run_id"]["run_name"] == "cw"


def test_a_failed_validation_is_stored_as_failed(class_split, digits, tmp_path):
    short = replace(class_split, forget=Manifest(*(values[:-1] for values in (
        class_split.forget.sample_ids, class_split.forget.indices, class_split.forget.labels))))  # fmt: skip
    report, docs = _publish(short, digits, tmp_path)
    assert not report.success
    failed = {result.description for result in report.failures}
    assert "forget: has 142 rows, as configured" in failed
    for part in PARTS:
        stored = json.loads(docs.results[part].read_text())
        assert stored["success"] is (part not in {r.part for r in report.failures})
        assert {r["expectation_config"]["description"] for r in stored["results"] if not r["success"]} == {
            result.description for result in report.failures if result.part == part
        }
    assert "Status: Failed" in _text(docs.pages["forget"])
    assert "'_validation_success_text': 'Failed'" in docs.index.read_text()


def test_validating_again_replaces_the_result_and_keeps_others(class_split, digits, tmp_path):
    _, first = _publish(class_split, digits, tmp_path)
    suites = {part: (tmp_path / "gx" / "expectations" / "cw" / f"{part}.json").read_text() for part in PARTS}
    _publish(class_split, digits, tmp_path, name="cw2")
    _, again = _publish(class_split, digits, tmp_path)

    for part in PARTS:  # the suite unchanged byte for byte; one result and one page per part
        assert (tmp_path / "gx" / "expectations" / "cw" / f"{part}.json").read_text() == suites[part]
        assert not first.pages[part].exists() and not first.results[part].exists()
        assert len(list(again.pages[part].parent.parent.glob("*/*.html"))) == 1
        assert len(list(again.results[part].parent.parent.glob("*/*.json"))) == 1
    results = data_context(tmp_path / "gx").validation_results_store.list_keys()
    assert sorted(key.run_id.run_name for key in results) == ["cw"] * 4 + ["cw2"] * 4
    index = again.index.read_text()
    for part in PARTS:
        assert index.count(f"'_table_row_link_path': '{again.pages[part].relative_to(again.site).as_posix()}'") == 1
        assert index.count(f"'_expectation_suite_name_sort': '{suite_name('cw', part)}'") == 1
    assert data_docs("cw2", tmp_path / "gx").pages["train"].is_file()


def _local_links(page: Path) -> set[Path]:
    """The files a page links to inside the site (not the web). GX 1.24's result pages point their
    favicon one folder short (its favicon.j2), which a browser shrugs off: that link is left out."""
    links = re.findall(r'(?:href|src)="([^"#]+)"', page.read_text())
    return {(page.parent / link).resolve() for link in links
            if "://" not in link and not link.startswith("mailto:") and not link.endswith("favicon.ico")}  # fmt: skip


def test_a_deletion_batch_gets_its_own_small_self_contained_site(digits, tmp_path, monkeypatch):
    """Saved where the deletion batch saves it, a batch's validation goes to gx/batches/<batch id>/."""
    from tasks.adapters.ledger import Ledger, batch_split
    from tasks.adapters.requests import DeletionRequest

    monkeypatch.chdir(tmp_path)
    class_split = class_wise(digits, [0])
    validate_against(class_split, digits, CLASS_WISE, "cw").save(layout.validation_report("cw"))
    ids = digits.train.ids
    ledger = Ledger.load(tmp_path / "ledger.csv")
    for number, batch_id in enumerate(("batch-1", "batch-2")):
        requests = [DeletionRequest(request_id=f"r{number}", sample_ids=ids[10 * number : 10 * number + 3])]
        ledger = ledger.extend(batch_id, requests)
        split, cumulative = batch_split(digits, ledger, batch_id)
        earlier = Manifest.of(digits.train, sorted(set(cumulative.indices) - set(split.forget.indices)))
        report = validate_against(split, digits, name=batch_id, earlier_deletions=earlier)
        assert report.batch and report.gx_root == layout.GX_BATCHES / batch_id
        report.save(layout.batch_validation_report(batch_id))  # as tasks/production/deletion.py's write_split

    study, batch = data_docs("cw"), batch_data_docs("batch-2")
    assert batch.site == layout.GX_BATCHES / "batch-2" / layout.DATA_DOCS.relative_to(layout.GX_CONTEXT)
    assert (layout.GX_BATCHES / "batch-2" / "expectations" / "batch-2" / "train.json").is_file()
    assert "batch-2" not in study.index.read_text() and "batch-1" not in batch.index.read_text()
    assert batch_data_docs("batch-1").pages["train"].is_file()
    assert "train: retain + forget + earlier deletions rows" in _text(batch.pages["train"])
    for docs in (study, batch):  # every page's local links resolve inside the site, which stays small
        for page in [docs.index, *docs.pages.values(), *docs.suites.values()]:
            assert all(link.is_file() and link.is_relative_to(docs.site.resolve()) for link in _local_links(page))
        assert sum(path.stat().st_size for path in docs.site.rglob("*") if path.is_file()) < 1_000_000
    with pytest.raises(FileNotFoundError):
        data_docs("batch-2")  # not in the study's context


def test_a_report_saved_without_publishing_publishes_nothing(published, tmp_path):
    _, report, _ = published
    report.save(tmp_path / "cw.json", gx_root=tmp_path / "gx", publish=False)
    assert not (tmp_path / "gx").exists()
    assert not {"runs", "batch"} & set(json.loads((tmp_path / "cw.json").read_text()))
    with pytest.raises(FileNotFoundError, match="no Data Docs of validation 'cw'"):
        data_docs("cw", tmp_path / "gx")


def test_the_projects_context_is_the_one_the_code_writes():
    """gx/great_expectations.yml is what `data_context` writes where none is; results, docs and batches are
    git-ignored."""
    assert (ROOT / layout.GX_CONTEXT / "great_expectations.yml").read_text() == _CONTEXT_CONFIG
    assert layout.DATA_DOCS_INDEX.is_relative_to(layout.GX_CONTEXT / "uncommitted")
    assert {"/gx/uncommitted/", "/gx/batches/"} <= set((ROOT / ".gitignore").read_text().splitlines())
    assert layout.GX_BATCHES.parent == layout.GX_CONTEXT
