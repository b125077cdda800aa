"""dvc.yaml against the code: each stage depends on the modules it runs, and writes where layout.py says.

The stages are dvc.yaml as DVC renders it (`foreach` and `matrix` expanded with params.yaml). A
stage's code is the closure of the project modules its command runs, found statically: every
`import` and `from ... import` (inside functions too) of `unlearn`, `tasks`, `flows` and `cli`,
package `__init__`s included.

Methods run by name: the methods package's registry imports every method module to list them,
but a stage runs only the methods it names. So an import of a method module by the package's
own modules (the registry) is dispatch, not a dependency; instead the project modules a stage
lists as deps (`unlearn/methods/<name>.py`) count as run, and their own imports must be deps too
(SalUn imports RL's loop, IU and FF the curvature helpers).
"""

from __future__ import annotations

import ast
import functools
import itertools
import shlex
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from tasks.adapters import layout

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("unlearn", "tasks", "flows", "cli")  # top-level packages and modules resolved to files


# --- the rendered pipeline ---------------------------------------------------------------------


def rendered_stages(root: Path = ROOT) -> list:
    """dvc.yaml's stages as DVC renders them (foreach and matrix expanded with root's params.yaml)."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return list(load_file(repo, str(root / "dvc.yaml")).stages.values())


@functools.cache
def study_stages() -> tuple:
    return tuple(rendered_stages())


def split_deps(stage) -> tuple[list[str], list[str]]:
    """A stage's dependencies as repo-relative paths: (code: .py files and folders holding code, data)."""
    from dvc.dependency import ParamsDependency

    paths = [Path(dep.def_path).as_posix() for dep in stage.deps if not isinstance(dep, ParamsDependency)]
    code = [p for p in paths if p.endswith(".py") or p.split("/")[0] in PROJECT]
    return code, [p for p in paths if p not in code]


def writes(stage) -> set[str]:
    """What a stage writes: its outs, metrics and plots."""
    return {Path(out.def_path).as_posix() for out in stage.outs}


def commands(stage) -> list[list[str]]:
    cmd = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
    return [shlex.split(line) for line in cmd]


def entry_point(argv: list[str]) -> Path:
    """The file `python -m package.module ...` or `python path/to/script.py ...` runs."""
    assert Path(argv[0]).name.startswith("python"), f"{' '.join(argv)}: not a python command"
    if argv[1] == "-m":
        found = module_file(argv[2])
        assert found is not None, f"{' '.join(argv)}: {argv[2]} is no project module"
        return found
    return ROOT / argv[1]


# --- the static import closure -----------------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The file of project module `name` (`tasks.adapters.params`: tasks/adapters/params.py); None outside it."""
    parts = name.split(".")
    if not parts[0] or parts[0] not in PROJECT:
        return None
    path = ROOT.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name `path` imports, anywhere in it; `from a import b` names both a and a.b."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (  # importlib.import_module("a.b") with a literal name
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


@functools.cache
def direct_imports(path: Path) -> frozenset[Path]:
    """The project files importing `path` runs: each imported module and the packages above it."""
    files = set()
    for name in imported_names(path):
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            found = module_file(".".join(parts[:end]))
            if found is not None:
                files.add(found)
    return frozenset(files)


@functools.cache
def method_files() -> frozenset[Path]:
    """The method modules, which `unlearn.methods` runs by name."""
    from unlearn.methods import METHOD_NAMES, method_module

    return frozenset(Path(method_module(name).__file__).resolve() for name in METHOD_NAMES)


def dispatch(importer: Path, imported: Path) -> bool:
    """Whether `importer` is the methods package's registry importing method module `imported`."""
    methods = method_files()
    return imported in methods and importer not in methods and importer.parent == imported.parent


def closure(roots: Iterable[Path]) -> set[Path]:
    """`roots` and every project file they import, transitively (but for the registry's dispatch)."""
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(found for found in direct_imports(path) if not dispatch(path, found))
    return seen


def stage_code(stage) -> set[str]:
    """The repo-relative files of the closure of what the stage runs (and the code deps it names)."""
    code, _ = split_deps(stage)
    roots = [entry_point(argv) for argv in commands(stage)]
    roots += [ROOT / p for p in code if p.endswith(".py") and (ROOT / p).is_file()]
    return {path.relative_to(ROOT).as_posix() for path in closure(roots)}


def covered(path: str, deps: Iterable[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def code_problems(stage) -> list[str]:
    """What is wrong with the code deps of `stage` (empty: nothing)."""
    code, _ = split_deps(stage)
    needed = stage_code(stage)
    problems = [f"imports {path}, not in its deps" for path in sorted(needed) if not covered(path, code)]
    problems += [f"lists {dep}, which does not exist" for dep in code if not (ROOT / dep).exists()]
    for dep in code:  # a folder dep must not bring in code the stage never runs
        if (ROOT / dep).is_dir():
            extra = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / dep).rglob("*.py"))
            extra = [p for p in extra if p not in needed and "__pycache__" not in p]
            if extra:
                problems.append(f"lists folder {dep}, whose {', '.join(extra)} it never imports")
    return problems


def all_code_problems(stages) -> dict[str, list[str]]:
    found = {stage.addressing: code_problems(stage) for stage in stages}
    return {name: problems for name, problems in found.items() if problems}


def test_the_pipeline_renders_stages_that_run_project_modules():
    stages = study_stages()
    assert len(stages) > 10
    for stage in stages:
        assert stage.cmd, f"{stage.addressing} has no command"
        for argv in commands(stage):
            assert entry_point(argv).is_file(), stage.addressing


def test_the_closure_follows_imports_inside_functions_and_the_packages_above():
    # the workspace imports tracking inside `tracked`; tasks/__init__.py runs before any tasks module.
    found = {p.relative_to(ROOT).as_posix() for p in closure([ROOT / "tasks" / "adapters" / "workspace.py"])}
    expected = {"tasks/__init__.py", "tasks/adapters/tracking.py", "tasks/adapters/params.py", "unlearn/__init__.py"}
    assert expected <= found
    assert "tasks/stages/report.py" not in found


def test_a_stage_runs_the_methods_it_names_not_every_registered_one():
    ft, salun = (ROOT / "unlearn" / "methods" / f"{name}.py" for name in ("ft", "salun"))
    assert {ft, salun} <= method_files()
    assert not method_files() & closure([ROOT / "tasks" / "adapters" / "params.py"])
    assert ROOT / "unlearn" / "methods" / "rl.py" in closure([salun])  # SalUn runs RL's loop


def test_every_stage_depends_on_every_module_it_imports():
    problems = all_code_problems(study_stages())
    assert not problems, "dvc.yaml's code deps miss what the stages run:\n" + "\n".join(
        f"  {name}: {'; '.join(lines)}" for name, lines in problems.items()
    )


def study_methods() -> list[str]:
    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["unlearn"]["methods"])


@pytest.mark.parametrize("method", study_methods())
def test_method_stages_depend_on_their_imports_for_any_method(tmp_path, method):
    """backdoor_cleanse and transfer run the methods params.yaml names: their deps hold for each one."""
    from dvc.repo import Repo

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backdoor"]["methods"] = [method]
    params["transfer"]["method"] = method
    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    stages = [s for s in rendered_stages(tmp_path) if s.name.startswith(("backdoor_cleanse", "transfer"))]
    assert {s.name for s in stages} == {f"backdoor_cleanse@{method}", "transfer"}
    problems = all_code_problems(stages)
    assert not problems, "\n".join(f"  {name}: {'; '.join(lines)}" for name, lines in problems.items())


# --- paths: dvc.yaml's against layout.py's -----------------------------------------------------


def options(argv: list[str]) -> dict[str, str]:
    return {flag.removeprefix("--"): value for flag, value in itertools.pairwise(argv) if flag.startswith("--")}


def split_files(scenario: str) -> set[Path]:
    """What the split stage writes: `Split.save`'s files, in the scenario's split folder."""
    return {layout.split_dir(scenario) / name for name in ("retain.csv", "forget.csv", "test.csv", "split.json")}


def layout_paths(argv: list[str]) -> tuple[set[Path], set[Path]]:
    """(reads, writes) of the stage command `argv`, as tasks/adapters/layout.py names them."""
    module = argv[2] if argv[1] == "-m" else argv[1]
    action = argv[3] if len(argv) > 3 and not argv[3].startswith("--") else None
    opts = options(argv)
    scenario, method = opts.get("scenario"), opts.get("method")
    match module, action:
        case "tasks.stages.prepare", None:
            return {layout.OWN_DATA}, {layout.RAW}
        case "tasks.stages.split", None:
            return {layout.RAW}, split_files(scenario)
        case "tasks.stages.validate", None:
            report = layout.validation_report(scenario)  # and its markdown beside it (ValidationReport.save)
            return {layout.RAW, layout.split_dir(scenario)}, {report, report.with_suffix(".md")}
        case "tasks.stages.train", None:
            return {layout.RAW}, {layout.original_dir()}
        case "tasks.stages.prune", None:
            return {layout.original_dir()}, {layout.pruned_dir(float(opts["sparsity"]))}
        case "tasks.production.study_calibration", None:
            return {layout.RAW, layout.pruned_root()}, {layout.CALIBRATION_RECORD}
        case "tasks.stages.unlearn", None:
            reads = {layout.validation_report(scenario), layout.split_dir(scenario), layout.pruned_root()}
            if method != "retrain":  # Retrain is the reference: it runs no calibrated values
                reads.add(layout.CALIBRATION_RECORD)
            return reads, {layout.unlearned_method_dir(scenario, method)}
        case "tasks.stages.evaluate", None:
            reads = {layout.split_dir(scenario), layout.unlearned_method_dir(scenario, method)}
            summary = layout.summary_dir(scenario, method)  # the DVC metrics (tests/unit/test_dvc_metrics.py)
            return reads, {layout.metrics_path(scenario, method), layout.plot_path(scenario, method), summary}
        case "tasks.stages.report", None:
            return {layout.METRICS, layout.TUNING_RECORD}, {layout.STUDY_REPORT, layout.FIGURES}
        case "tasks.stages.backdoor", "train":
            return {layout.RAW}, {layout.BACKDOOR_DENSE, layout.BACKDOOR_REWIND}
        case "tasks.stages.backdoor", "prune":
            return {layout.RAW, layout.BACKDOOR_DENSE, layout.BACKDOOR_REWIND}, {layout.trojan_dir()}
        case "tasks.stages.backdoor", "cleanse":
            return {layout.RAW, layout.trojan_dir()}, {layout.cleansed_dir(method), layout.backdoor_metrics_dir(method)}
        case "tasks.stages.backdoor", "report":
            return {layout.BACKDOOR_METRICS}, {layout.BACKDOOR_SUMMARY, layout.BACKDOOR_REPORT, layout.BACKDOOR_FIGURES}
        case "tasks.stages.transfer", None:
            return {layout.RAW}, {layout.TRANSFER_METRICS, layout.TRANSFER_REPORT}
    raise AssertionError(f"{' '.join(argv)}: a stage this test does not know; add its layout paths here")


def as_posix(paths: Iterable[Path]) -> set[str]:
    return {Path(p).as_posix() for p in paths}


@pytest.mark.parametrize("stage", study_stages(), ids=lambda stage: stage.addressing)
def test_stage_paths_are_layouts(stage):
    """What a stage reads and writes in dvc.yaml is what tasks/adapters/layout.py says for its arguments."""
    [argv] = commands(stage)
    reads, written = layout_paths(argv)
    _, data = split_deps(stage)
    assert set(data) == as_posix(reads), f"{stage.addressing} reads"
    assert writes(stage) == as_posix(written), f"{stage.addressing} writes"


def test_split_files_are_what_a_split_saves(tmp_path, digits):
    from unlearn.splits import class_wise

    class_wise(digits, [0]).save(tmp_path / "class_wise")
    assert {p.name for p in (tmp_path / "class_wise").iterdir()} == {p.name for p in split_files("class_wise")}


# --- names defined once ------------------------------------------------------------------------


def string_constants(path: Path) -> Iterable[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_only_layout_spells_the_params_file():
    """Code names params.yaml through `tasks.adapters.layout.PARAMS_FILE` (= `tasks.adapters.params.PARAMS_FILE`)."""
    sources = [ROOT / "cli.py", *sorted((ROOT / "tasks").rglob("*.py")), *sorted((ROOT / "flows").glob("*.py"))]
    sources += sorted((ROOT / "benchmarks").glob("*.py"))
    spelled = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sources
        if path != ROOT / "tasks" / "adapters" / "layout.py"
        for line, value in string_constants(path)
        if value == layout.PARAMS_FILE.name or value.endswith("/" + layout.PARAMS_FILE.name)
    ]
    assert not spelled, f"use tasks.adapters.layout.PARAMS_FILE: {', '.join(spelled)}"
