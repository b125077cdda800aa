"""Great Expectations checks on a split's manifests before anything trains on them.

Four data frames are checked, each by its own expectation suite: `retain`, `forget`, `test`,
and `train` (retain and forget stacked), so that the checks across manifests (disjoint,
together the training set) are ordinary GX expectations too. Each row carries the data
set's id and label at its index (`dataset_id`, `dataset_label`), so "this row is the data
set's row" is a column-pair expectation rather than an in-set check against every id.

Every expectation has a readable description. A failing suite raises `SplitValidationError`
naming each failed expectation, after the report (reports/validation/<scenario>.json, with a
markdown summary beside it) is written.

Saving a report also publishes it to a file-backed GX context: a scenario's to the study's
(`layout.GX_CONTEXT`, gx/), a deletion batch's to its own (gx/batches/<batch id>/). Each part's
suite is stored as `expectations/<name>/<part>.json`, each part's result in
`uncommitted/validations/`, and the context's Data Docs site (gx/uncommitted/data_docs/local_site/
index.html, `layout.DATA_DOCS_INDEX`) is rebuilt for them; validating a name again replaces its
earlier results. `data_docs(scenario)` and `batch_data_docs(batch_id)` find the pages.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tasks.adapters import layout
from tasks.adapters.params import Scenario
from unlearn.errors import ConfigError, UnlearnError
from unlearn.splits import Manifest, Split

# GX reads this when it is imported; the Makefile and the tests set it too.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

PARTS = ("retain", "forget", "test", "train")
_LIST_LIMIT = 10  # list items kept in a report's kwargs and observed values
_ID_NAMESPACE = uuid.UUID("5b0b6a52-6f0e-4d1c-9a57-1d8c2f3e4b61")  # of the stored suites' and expectations' ids


class SplitValidationError(UnlearnError, ValueError):
    """A split whose manifests fail the validation suite; the message names each failure."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failures = report.failures
        lines = [f"split {report.scenario!r} failed {len(failures)} of {len(report.results)} expectations:"]
        lines += [f"  - {result.describe()}" for result in failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Reference:
    """The prepared data set a split must match: ids and labels by index, the class count."""

    train_ids: tuple[str, ...]
    test_size: int
    num_classes: int
    train_labels: tuple[int, ...] | None = None
    test_ids: tuple[str, ...] | None = None
    test_labels: tuple[int, ...] | None = None

    @classmethod
    def of(cls, bundle) -> Reference:
        """The reference of a `unlearn.data.DataBundle`: everything known."""
        return cls(tuple(bundle.train.ids), len(bundle.test), bundle.num_classes,
                   tuple(bundle.train.labels.tolist()), tuple(bundle.test.ids),
                   tuple(bundle.test.labels.tolist()))  # fmt: skip

    @property
    def train_size(self) -> int:
        return len(self.train_ids)


@dataclass(frozen=True)
class Expected:
    """Row counts and classes a correct split has; `None` where the inputs do not say."""

    forgotten_classes: tuple[int, ...] | None
    forget_rows: int | None
    test_rows: int | None


@dataclass(frozen=True)
class Check:
    """One expectation on one part: its GX class name, description and keyword arguments."""

    part: str
    expectation: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpectationResult:
    """The outcome of one expectation, reduced to what a reader of the report needs."""

    part: str
    description: str
    expectation_type: str
    kwargs: dict[str, Any]
    success: bool
    observed: dict[str, Any]

    def describe(self) -> str:
        """One line: what was expected of which part, the GX expectation and column, what was seen."""
        column = self.kwargs.get("column") or self.kwargs.get("column_A")
        target = f"{self.expectation_type} on {column!r}" if column else self.expectation_type
        seen = "; ".join(f"{key}: {value}" for key, value in self.observed.items())
        return f"{self.description} ({target}" + (f"; {seen})" if seen else ")")


@dataclass(frozen=True)
class SuiteRun:
    """One part's GX run, as GX has it: the suite, the stored result's key and the result itself."""

    part: str
    suite: Any  # gx.ExpectationSuite
    key: Any  # ValidationResultIdentifier
    result: Any  # ExpectationSuiteValidationResult


@dataclass(frozen=True)
class ValidationReport:
    """The suite's verdict on one split, with the split's digests.

    Not in the JSON: `runs`, GX's own suites and results, which `save` publishes to a GX context,
    and `batch`, whether the split is a deletion batch's (validated with its earlier deletions).
    """

    scenario: str
    kind: str
    success: bool
    results: list[ExpectationResult]
    digests: dict[str, str]
    sizes: dict[str, int]
    runs: tuple[SuiteRun, ...] = field(default=(), repr=False, compare=False)
    batch: bool = field(default=False, repr=False, compare=False)

    @property
    def gx_root(self) -> Path:
        """The GX context `save` publishes to: the study's (gx/) or the deletion batch's own (gx/batches/<id>/)."""
        return context_root(self.scenario, self.batch)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [result for result in self.results if not result.success]

    def to_json(self) -> str:
        record = asdict(replace(self, runs=()))
        del record["runs"], record["batch"]
        return json.dumps(record, indent=2) + "\n"

    def to_markdown(self) -> str:
        """A short table of every expectation, failures first."""
        verdict = "passed" if self.success else f"FAILED ({len(self.failures)} failed)"
        lines = [f"# Split validation: {self.scenario}", "",
                 f"{len(self.results)} expectations, {verdict}. Sizes: {self.sizes}.",
                 f"Split digest: `{self.digests['split']}`.", "",
                 "| result | expectation | GX expectation | column |", "|---|---|---|---|"]  # fmt: skip
        for result in sorted(self.results, key=lambda r: r.success):
            mark = "ok" if result.success else "**FAILED**"
            column = result.kwargs.get("column") or result.kwargs.get("column_A", "")
            lines.append(f"| {mark} | {result.description} | {result.expectation_type} | {column} |")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path, gx_root: str | Path | None = None, publish: bool = True) -> Path:
        """Write the report as JSON at `path` and as markdown beside it, then (`publish`) store its suites
        and results in the GX context at `gx_root` (default: `self.gx_root`) and build their Data Docs."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        path.with_suffix(".md").write_text(self.to_markdown())
        if publish and self.runs:
            publish_report(self, self.gx_root if gx_root is None else gx_root)
        return path

    def raise_for_failures(self) -> None:
        if not self.success:
            raise SplitValidationError(self)


def expected_for(split: Split, reference: Reference, scenario: Scenario | None = None) -> Expected:
    """What `split` must hold: from the configured scenario where given, else from the split itself."""
    if scenario is not None and scenario.kind != split.scenario:
        raise ConfigError(
            f"the split is {split.scenario!r} but the scenario is {scenario.kind!r}: rerun the split stage"
        )
    if split.scenario != "class_wise":
        forget_rows = None
        if scenario is not None:  # random: drawn as unlearn.splits.random_fraction draws it
            forget_rows = int(round(reference.train_size * scenario.fraction))
        return Expected(None, forget_rows, reference.test_size)
    classes = tuple(sorted(set(scenario.classes if scenario else split.forgotten_classes)))
    forget_rows = test_rows = None
    if reference.train_labels is not None:
        forget_rows = sum(label in classes for label in reference.train_labels)
    if reference.test_labels is not None:
        test_rows = reference.test_size - sum(label in classes for label in reference.test_labels)
    return Expected(classes, forget_rows, test_rows)


def _check(part: str, expectation: str, description: str, **kwargs) -> Check:
    return Check(part, expectation, f"{part}: {description}", kwargs)


def _manifest_checks(part: str, source_size: int, num_classes: int) -> list[Check]:
    """Ids and indices present and unique, indices and labels within range."""
    return [
        _check(part, "ExpectColumnValuesToNotBeNull", "every row has a sample id", column="sample_id"),
        _check(part, "ExpectColumnValuesToBeUnique", "sample ids are unique", column="sample_id"),
        _check(part, "ExpectColumnValuesToNotBeNull", "every row has an index", column="index"),
        _check(part, "ExpectColumnValuesToBeUnique", "indices are unique", column="index"),
        _check(part, "ExpectColumnValuesToBeBetween", f"indices lie in 0..{source_size - 1}",
               column="index", min_value=0, max_value=source_size - 1),
        _check(part, "ExpectColumnValuesToNotBeNull", "every row has a label", column="label"),
        _check(part, "ExpectColumnValuesToBeBetween", f"labels lie in the class range 0..{num_classes - 1}",
               column="label", min_value=0, max_value=num_classes - 1),
    ]  # fmt: skip


def _agreement_checks(part: str, source: str, ids: bool, labels: bool) -> list[Check]:
    """Each row is the data set's row at its index: same id, same label."""
    checks = []
    if ids:
        checks.append(_check(part, "ExpectColumnPairValuesToBeEqual",
                             f"ids are the {source} set's ids at their index",
                             column_A="sample_id", column_B="dataset_id"))  # fmt: skip
    if labels:
        checks.append(_check(part, "ExpectColumnPairValuesToBeEqual",
                             f"labels are the {source} set's labels at their index",
                             column_A="label", column_B="dataset_label"))  # fmt: skip
    return checks


def _class_checks(classes: tuple[int, ...]) -> list[Check]:
    """Class-wise forgetting: forget is exactly the classes; retain and test hold none of them."""
    value_set = list(classes)
    return [
        _check("retain", "ExpectColumnValuesToNotBeInSet", f"holds none of the forgotten classes {value_set}",
               column="label", value_set=value_set),
        _check("forget", "ExpectColumnValuesToBeInSet", f"holds only the forgotten classes {value_set}",
               column="label", value_set=value_set),
        _check("forget", "ExpectColumnDistinctValuesToEqualSet", f"holds every forgotten class {value_set}",
               column="label", value_set=value_set),
        _check("test", "ExpectColumnValuesToNotBeInSet", f"holds none of the forgotten classes {value_set}",
               column="label", value_set=value_set),
    ]  # fmt: skip


def _partition_checks(train_size: int, earlier_deletions: bool = False) -> list[Check]:
    """Retain and forget (stacked as part `train`, with a batch's earlier deletions) are disjoint and
    together the whole training set.

    Unique ids, each the training set's id at its index, and as many rows as the training
    set: that is the training set exactly, each sample once.
    """
    return [
        _check("train", "ExpectColumnValuesToBeUnique", "retain and forget share no sample id",
               column="sample_id"),
        _check("train", "ExpectColumnValuesToBeUnique", "retain and forget share no index", column="index"),
        _check("train", "ExpectTableRowCountToEqual",
               f"retain + forget{' + earlier deletions' if earlier_deletions else ''} rows = the training set's "
               f"{train_size}", value=train_size),
    ]  # fmt: skip


def _count_checks(expected: Expected) -> list[Check]:
    """Forget and test row counts as configured."""
    if expected.forget_rows is None:
        checks = [_check("forget", "ExpectTableRowCountToBeBetween", "is not empty", min_value=1)]
    else:
        rows = expected.forget_rows
        checks = [_check("forget", "ExpectTableRowCountToEqual", f"has {rows} rows, as configured", value=rows)]
    if expected.test_rows is not None:
        checks.append(_check("test", "ExpectTableRowCountToEqual",
                             f"has {expected.test_rows} rows (the test set less any forgotten class)",
                             value=expected.test_rows))  # fmt: skip
    return checks


def plan_checks(reference: Reference, expected: Expected, earlier_deletions: bool = False) -> list[Check]:
    """Every expectation the split must meet, in report order (`earlier_deletions`: a later batch's split)."""
    checks = []
    for part in ("retain", "forget", "test"):
        size = reference.test_size if part == "test" else reference.train_size
        checks += _manifest_checks(part, size, reference.num_classes)
    if expected.forgotten_classes is not None:
        checks += _class_checks(expected.forgotten_classes)
    checks += _partition_checks(reference.train_size, earlier_deletions)
    checks += _agreement_checks("train", "training", True, reference.train_labels is not None)
    checks += _agreement_checks("test", "test", reference.test_ids is not None, reference.test_labels is not None)
    return checks + _count_checks(expected)


def _at(values: Sequence | None, index: Any) -> Any:
    """`values[index]`, or None where there is no such row (the range check reports that)."""
    if values is None or not isinstance(index, int) or not 0 <= index < len(values):
        return None
    return values[index]


def manifest_frames(split: Split, reference: Reference, earlier_deletions: Manifest | None = None) -> dict:
    """The data frames the suites run on: one per manifest, and retain + forget (+ earlier deletions)
    stacked as `train`."""
    import pandas as pd

    def frame(manifest: Manifest, ids: Sequence | None, labels: Sequence | None) -> pd.DataFrame:
        # An empty CSV cell is read back as "": it is a missing id, not an id.
        return pd.DataFrame({
            "sample_id": [sample_id or None for sample_id in manifest.sample_ids],
            "index": manifest.indices,
            "label": manifest.labels,
            "dataset_id": [_at(ids, index) for index in manifest.indices],
            "dataset_label": [_at(labels, index) for index in manifest.indices],
        })  # fmt: skip

    retain = frame(split.retain, reference.train_ids, reference.train_labels)
    forget = frame(split.forget, reference.train_ids, reference.train_labels)
    test = frame(split.test, reference.test_ids, reference.test_labels)
    parts = [retain.assign(part="retain"), forget.assign(part="forget")]
    if earlier_deletions is not None:
        deleted = frame(earlier_deletions, reference.train_ids, reference.train_labels)
        parts.append(deleted.assign(part="deleted earlier"))
    train = pd.concat(parts, ignore_index=True)
    return {"retain": retain, "forget": forget, "test": test, "train": train}


def gx_context():
    """An ephemeral GX context: in-memory stores, no data docs, no progress bars, no analytics."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


# The GX contexts: the study's (`layout.GX_CONTEXT`, gx/) and each deletion batch's own
# (`layout.GX_BATCHES`/<batch id>/), so that publishing a batch costs the same however many came
# before (a context's Data Docs index reads every result it holds). The config is written where
# none is. The study's stored suites are git-tracked; results, Data Docs (uncommitted/) and the
# batches' contexts are not.
# Checkpoints and validation definitions are not kept: a validation is rebuilt from the split.
_SITE = layout.DATA_DOCS.relative_to(layout.GX_CONTEXT)  # the Data Docs site, in a context
_RESULTS = Path("uncommitted/validations")  # the stored results, in a context
# What the site's pages use of the static assets GX copies in at every build (how-to buttons are
# off; logos come from GX's CDN): the rest (4 MB of images and fonts) is deleted after the build.
_STATIC_KEPT = ("images/favicon.ico", "styles/")
_CONTEXT_CONFIG = f"""\
# The unlearn project's Great Expectations context, written by tasks/adapters/expectations.py.
# expectations/: every validation's suites, <name>/<part>.json (name: a scenario or a deletion batch).
# uncommitted/: every validation's results and the Data Docs site built from them (git-ignored).
config_version: 4
analytics_enabled: false
progress_bars:
  globally: false
  metric_calculations: false
stores:
  expectations_store:
    class_name: ExpectationsStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: expectations/
      suppress_store_backend_id: true
  validation_results_store:
    class_name: ValidationResultsStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: {_RESULTS.as_posix()}/
      suppress_store_backend_id: true
  checkpoint_store:
    class_name: CheckpointStore
    store_backend:
      class_name: InMemoryStoreBackend
  validation_definition_store:
    class_name: ValidationDefinitionStore
    store_backend:
      class_name: InMemoryStoreBackend
expectations_store_name: expectations_store
validation_results_store_name: validation_results_store
checkpoint_store_name: checkpoint_store
data_docs_sites:
  local_site:
    class_name: SiteBuilder
    show_how_to_buttons: false
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: {_SITE.as_posix()}/
    site_index_builder:
      class_name: DefaultSiteIndexBuilder
"""


def context_root(name: str, batch: bool = False) -> Path:
    """The GX context of validation `name`: the study's, or (`batch`) the deletion batch `name`'s own."""
    return layout.GX_BATCHES / name if batch else layout.GX_CONTEXT


def data_context(root: str | Path = layout.GX_CONTEXT):
    """The file-backed GX context at `root`: its great_expectations.yml is written when missing."""
    import great_expectations as gx

    root = Path(root)
    config = root / "great_expectations.yml"
    if not config.exists():
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(_CONTEXT_CONFIG)
    return gx.get_context(mode="file", context_root_dir=root)


@dataclass(frozen=True)
class DataDocs:
    """One validation's Data Docs: the site's index, and per part its result's page, its suite's page
    and the stored result (GX's JSON) the page was built from."""

    index: Path
    pages: dict[str, Path]
    suites: dict[str, Path]
    results: dict[str, Path]

    @property
    def site(self) -> Path:
        """The whole static site: its pages link to one another and to static/ by relative paths."""
        return self.index.parent


def data_docs(name: str, root: str | Path = layout.GX_CONTEXT) -> DataDocs:
    """The Data Docs of validation `name` in the GX context at `root` (default: the study's, for a
    scenario); raises FileNotFoundError if that validation was not published (`ValidationReport.save`).

    Each page is one HTML file (styles from public CDNs) that can be logged on its own, e.g. as an
    MLflow artifact; `site` is the whole site.
    """
    import glob

    root = Path(root)
    site = root / _SITE
    pages, suites, results = {}, {}, {}
    for part in PARTS:
        folder = Path(*suite_name(name, part).split("."))
        found = sorted((site / "validations" / folder).glob(f"{glob.escape(name)}/*/*.html"))
        if found:  # one per part (publishing replaces earlier results), else the latest
            pages[part] = found[-1]
            suites[part] = (site / "expectations" / folder).with_suffix(".html")
            results[part] = (root / _RESULTS / found[-1].relative_to(site / "validations")).with_suffix(".json")
    if not pages or not (site / "index.html").exists():
        raise FileNotFoundError(f"no Data Docs of validation {name!r} in {site}: validate it first")
    return DataDocs(site / "index.html", pages, suites, results)


def batch_data_docs(batch_id: str) -> DataDocs:
    """A deletion batch's Data Docs, in its own context: `site` holds that batch's pages only (its
    index, a result page and a suite page per part: about 0.3 MB), to log whole to the batch's run."""
    return data_docs(batch_id, context_root(batch_id, batch=True))


def publish_report(report: ValidationReport, root: str | Path | None = None) -> DataDocs:
    """Store the report's suites and results in the GX context at `root` (default: `report.gx_root`)
    and build their Data Docs.

    Earlier results of the same validation (name) are removed first, and their pages with them, so
    each suite has one result: the latest. Only the new pages and the index are rendered.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    root = report.gx_root if root is None else Path(root)
    context = data_context(root)
    store = context.validation_results_store
    names = {suite_name(report.scenario, part) for part in PARTS}
    for key in store.list_keys():
        if key.expectation_suite_identifier.name in names:
            store.remove_key(key)
    resources = []
    for run in report.runs:  # the suite as it ran, ids and all (`context.suites` would renumber them)
        suite = ExpectationSuiteIdentifier(name=run.suite.name)
        context.expectations_store.set(suite, gx.ExpectationSuite(**run.suite.to_json_dict()))
        store.set(run.key, run.result)
        resources += [suite, run.key]
    context.build_data_docs(resource_identifiers=resources)
    _trim_static(root / _SITE / "static")
    return data_docs(report.scenario, root)


def _trim_static(static: Path) -> None:
    for path in sorted(static.rglob("*"), reverse=True):  # files before their folders
        relative = path.relative_to(static).as_posix()
        if path.is_file() and not any(relative == kept or relative.startswith(kept) for kept in _STATIC_KEPT):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def suite_name(name: str, part: str) -> str:
    """The GX suite of `part` in validation `name` (a scenario, a batch id): expectations/<name>/<part>.json."""
    return f"{name}.{part}"


def _stable_id(*parts: str) -> str:
    """The same id for the same suite or expectation every run, so a stored suite changes only with its checks."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\0".join(parts)))


def _configuration(gx, check: Check) -> dict:
    expectation = getattr(gx.expectations, check.expectation)(description=check.description, **check.kwargs)
    return expectation.configuration.to_json_dict()


def run_suites(checks: Sequence[Check], frames: dict, name: str = "split") -> tuple[list[ExpectationResult],
                                                                                   tuple[SuiteRun, ...]]:  # fmt: skip
    """Run each part's checks as one GX validation definition over that part's data frame, all as one
    GX run named `name`: the results, and GX's own suites and results (to publish)."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    context = gx_context()
    source = context.data_sources.add_pandas("split")
    run_id = RunIdentifier(run_name=name, run_time=datetime.datetime.now(datetime.UTC))
    results, runs = [], []
    for part in PARTS:
        suite_id = suite_name(name, part)
        expectations = [  # as configurations: a suite takes no Expectation with an id
            _configuration(gx, check) | {"id": _stable_id(suite_id, check.expectation, check.description)}
            for check in checks
            if check.part == part
        ]
        if not expectations:
            continue
        # Set in the store as it is: `context.suites.add` would give the suite and each expectation a random id.
        suite = gx.ExpectationSuite(name=suite_id, expectations=expectations, id=_stable_id(suite_id))
        context.expectations_store.set(ExpectationSuiteIdentifier(name=suite_id), suite)
        suite = context.suites.get(suite_id)
        batch = source.add_dataframe_asset(part).add_batch_definition_whole_dataframe(part)
        definition = gx.ValidationDefinition(name=part, data=batch, suite=suite)
        definition = context.validation_definitions.add(definition)
        outcome = definition.run(batch_parameters={"dataframe": frames[part]}, result_format="SUMMARY",
                                 run_id=run_id)  # fmt: skip
        [key] = [key for key in context.validation_results_store.list_keys()
                 if key.expectation_suite_identifier.name == suite_id]  # fmt: skip
        runs.append(SuiteRun(part, suite, key, outcome))
        results += [_result(part, result) for result in outcome.results]
    return results, tuple(runs)


def run_checks(checks: Sequence[Check], frames: dict) -> list[ExpectationResult]:
    """Run each part's checks as one GX validation definition over that part's data frame."""
    return run_suites(checks, frames)[0]


def _result(part: str, outcome) -> ExpectationResult:
    config = outcome.expectation_config
    kwargs = {key: _brief(value) for key, value in config.kwargs.items() if key != "batch_id"}
    observed = {
        key: _brief(outcome.result[key])
        for key in ("observed_value", "element_count", "unexpected_count", "partial_unexpected_list")
        if outcome.result.get(key) not in (None, [])
    }
    if outcome.exception_info and outcome.exception_info.get("raised_exception"):
        observed["exception"] = outcome.exception_info.get("exception_message")
    return ExpectationResult(
        part, config.description or config.type, config.type, kwargs, bool(outcome.success), observed
    )


def _brief(value: Any) -> Any:
    """JSON-safe and short: numpy values as Python ones, long lists cut to their first items."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple | set):
        items = [_brief(item) for item in value]
        if len(items) > _LIST_LIMIT:
            return {"count": len(items), "first": items[:_LIST_LIMIT]}
        return items
    if isinstance(value, dict):
        return {str(key): _brief(item) for key, item in value.items()}
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def validate_split(
    split: Split,
    train_ids: Sequence[str],
    num_classes: int,
    test_size: int,
    scenario: Scenario | None = None,
    *,
    train_labels: Sequence[int] | None = None,
    test_ids: Sequence[str] | None = None,
    test_labels: Sequence[int] | None = None,
    name: str | None = None,
    earlier_deletions: Manifest | None = None,
) -> ValidationReport:
    """Run the suite on `split`; the report says which expectations failed (nothing is raised).

    Args:
        train_ids: the prepared data set's training ids, in order (indices point into them).
        scenario: the configured scenario; the forget set's size and classes are checked against it.
        train_labels, test_ids, test_labels: more of the data set; each adds checks (rows agree
            with the data set; class-wise row counts). `validate_against` passes them all.
        name: the scenario's name in params.yaml, for the report (default: the split's kind).
        earlier_deletions: samples deleted by earlier batches (a deletion batch's split): in
            neither retain nor forget, they complete the partition of the training set.
    """
    reference = Reference(tuple(train_ids), test_size, num_classes,
                          None if train_labels is None else tuple(train_labels),
                          None if test_ids is None else tuple(test_ids),
                          None if test_labels is None else tuple(test_labels))  # fmt: skip
    checks = plan_checks(reference, expected_for(split, reference, scenario), earlier_deletions is not None)
    name = name or split.scenario
    results, runs = run_suites(checks, manifest_frames(split, reference, earlier_deletions), name)
    sizes = {part: len(getattr(split, part)) for part in ("retain", "forget", "test")}
    success = all(result.success for result in results)
    return ValidationReport(name, split.scenario, success, results, split.digests(), sizes, runs,
                            batch=earlier_deletions is not None)  # fmt: skip


def validate_against(
    split: Split,
    bundle,
    scenario: Scenario | None = None,
    name: str | None = None,
    earlier_deletions: Manifest | None = None,
) -> ValidationReport:
    """Run the whole suite on `split` against the prepared data set `bundle` (a `DataBundle`)."""
    reference = Reference.of(bundle)
    return validate_split(split, reference.train_ids, reference.num_classes, reference.test_size, scenario,
                          train_labels=reference.train_labels, test_ids=reference.test_ids,
                          test_labels=reference.test_labels, name=name,
                          earlier_deletions=earlier_deletions)  # fmt: skip
