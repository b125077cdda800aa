"""Stage `validate`: a scenario's split checked by Great Expectations (`tasks.adapters.expectations`).

`python -m tasks.stages.validate --scenario NAME` exits 0 if the split passes, 1 if not, 2 on bad input;
the report is reports/validation/<scenario>.json, with a markdown summary beside it. The suites and
results are also stored in the GX context gx/ and its Data Docs rebuilt (gx/uncommitted/data_docs/
local_site/index.html): `tasks.adapters.expectations.data_docs(scenario)` finds the scenario's pages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.adapters import layout
from tasks.adapters.expectations import SplitValidationError, ValidationReport, validate_against
from tasks.adapters.params import Params, Scenario, load_params
from unlearn.errors import ConfigError, UnlearnError
from unlearn.splits import Split


def _scenario(params: Params, name: str) -> Scenario:
    try:
        return params.split.scenarios[name]
    except KeyError:
        known = ", ".join(params.split.scenarios)
        raise ConfigError(f"split.scenarios has no scenario {name!r}; known: {known}") from None


def validate_scenario(params: Params, scenario_name: str) -> ValidationReport:
    """Validate data/splits/<scenario>/ against data/raw/dataset.npz; save the report and publish it to
    the GX context (stored suites and results, Data Docs); raise on failure."""
    from unlearn.data import DataBundle

    scenario = _scenario(params, scenario_name)
    bundle = DataBundle.load(layout.RAW)
    report = validate_against(Split.load(layout.split_dir(scenario_name)), bundle, scenario, scenario_name)
    report.save(layout.validation_report(scenario_name))
    report.raise_for_failures()
    return report


def run(scenario_name: str, params_path: str | Path = layout.PARAMS_FILE) -> ValidationReport:
    """The DVC stage: read params.yaml, then `validate_scenario`."""
    return validate_scenario(load_params(params_path), scenario_name)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tasks.stages.validate --scenario NAME`: exit 0 if the split passes, 1 if not, 2 on bad input."""
    parser = argparse.ArgumentParser(description="Validate one scenario's split manifests (Great Expectations).")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--params", default=str(layout.PARAMS_FILE))
    args = parser.parse_args(argv)
    report_path = layout.validation_report(args.scenario)
    try:
        report = run(args.scenario, args.params)
    except SplitValidationError as error:
        print(f"error: {error}\nreport: {report_path}\ndata docs: {layout.DATA_DOCS_INDEX}", file=sys.stderr)
        return 1
    except UnlearnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"split {args.scenario!r}: all {len(report.results)} expectations passed (report: {report_path}, "
          f"data docs: {layout.DATA_DOCS_INDEX})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
