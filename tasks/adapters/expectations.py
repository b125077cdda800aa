"""Great Expectations checks on a split's manifests before anything trains on them.

Four data frames are checked, each by its own expectation suite: `retain`, `forget`, `test`,
and `train` (retain and forget stacked), so that the checks across manifests (disjoint,
together the training set) are ordinary GX expectations too. Each row carries the data
set's id and label at its index (`dataset_id`, `dataset_label`), so "this row is the data
set's row" is a column-pair expectation rather than an in-set check against every id.

Every expectation has a readable description. A failing suite raises `SplitValidationError`
naming each failed expectation, after the report (reports/validation/<scenario>.json, with a
markdown summary beside it) is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters.params import Scenario
from unlearn.errors import ConfigError, UnlearnError
from unlearn.splits import Manifest, Split

# GX reads this when it is imported; the Makefile and the tests set it too.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

PARTS = ("retain", "forget", "test", "train")
_LIST_LIMIT = 10  # list items kept in a report's kwargs and observed values


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
class ValidationReport:
    """The suite's verdict on one split, with the split's digests."""

    scenario: str
    kind: str
    success: bool
    results: list[ExpectationResult]
    digests: dict[str, str]
    sizes: dict[str, int]

    @property
    def failures(self) -> list[ExpectationResult]:
        return [result for result in self.results if not result.success]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

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

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON at `path` and as markdown beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        path.with_suffix(".md").write_text(self.to_markdown())
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


def run_checks(checks: Sequence[Check], frames: dict) -> list[ExpectationResult]:
    """Run each part's checks as one GX validation definition over that part's data frame."""
    import great_expectations as gx

    context = gx_context()
    source = context.data_sources.add_pandas("split")
    results = []
    for part in PARTS:
        expectations = [
            getattr(gx.expectations, check.expectation)(description=check.description, **check.kwargs)
            for check in checks
            if check.part == part
        ]
        if not expectations:
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=part, expectations=expectations))
        batch = source.add_dataframe_asset(part).add_batch_definition_whole_dataframe(part)
        definition = gx.ValidationDefinition(name=part, data=batch, suite=suite)
        definition = context.validation_definitions.add(definition)
        outcome = definition.run(batch_parameters={"dataframe": frames[part]}, result_format="SUMMARY")
        results += [_result(part, result) for result in outcome.results]
    return results


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
    results = run_checks(checks, manifest_frames(split, reference, earlier_deletions))
    sizes = {part: len(getattr(split, part)) for part in ("retain", "forget", "test")}
    success = all(result.success for result in results)
    return ValidationReport(name or split.scenario, split.scenario, success, results, split.digests(), sizes)


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
