"""The `.dvc` files of every deletion batch (and audit pool), committed on a git branch of their own.

`dvc add` writes a small `.dvc` file per target (its md5 and size); the data goes to the cache
and the remote. Left in the working copy those files are untracked, so a wiped or re-cloned
checkout could not bring a batch's split back. Here each batch's `.dvc` files are committed to
the branch `DVC_BRANCH` with git plumbing (a temporary index, `commit-tree`, `update-ref`): the
working branch, its index and its files are never touched, and the commit is recorded on the
registry version (`dvc.commit`). `restore` writes the files back from that commit and `dvc pull`s
(or checks out from the cache) what they point at.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from unlearn.errors import UnlearnError

DVC_BRANCH = "unlearn/dvc"
COMMIT_TAG = "dvc.commit"


class DvcBranchError(UnlearnError, RuntimeError):
    """The project is no git repository, or git refused a step of recording or restoring `.dvc` files."""


def _git(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, env=env, input=stdin, check=False)
    if done.returncode:
        raise DvcBranchError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[:300]}")
    return done.stdout.strip()


def is_git_project() -> bool:
    """Whether the current directory is inside a git work tree."""
    done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip() == "true"


def record(dvc_files: Sequence[str | Path], message: str) -> str:
    """Commit `dvc_files` (paths relative to the project root) onto `DVC_BRANCH`; returns the commit's sha.

    The branch's tree keeps every file committed before (one batch's files never drop another's).
    """
    if not is_git_project():
        raise DvcBranchError("the project is no git repository: `git init` it so batches' .dvc files can be kept")
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{DVC_BRANCH}"], capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(folder) / "index")}
        if parent:
            _git("read-tree", parent, env=env)
        for path in dvc_files:
            blob = _git("hash-object", "-w", str(path))
            _git("update-index", "--add", "--cacheinfo", f"100644,{blob},{Path(path).as_posix()}", env=env)
        tree = _git("write-tree", env=env)
    identity = {"GIT_AUTHOR_NAME": "unlearn", "GIT_AUTHOR_EMAIL": "unlearn@localhost",
                "GIT_COMMITTER_NAME": "unlearn", "GIT_COMMITTER_EMAIL": "unlearn@localhost"}  # fmt: skip
    commit = _git(
        "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, env={**os.environ, **identity}
    )
    _git("update-ref", f"refs/heads/{DVC_BRANCH}", commit, *([parent] if parent else []))
    return commit


def restore(commit: str, dvc_files: Sequence[str | Path], pull: bool = True) -> list[Path]:
    """Write `dvc_files` back as they were in `commit`, then bring their data back (`dvc pull`, else the cache)."""
    from dvc.repo import Repo

    written = []
    for path in dvc_files:
        content = _git("show", f"{commit}:{Path(path).as_posix()}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content + "\n")
        written.append(Path(path))
    targets = [str(path) for path in written]
    with Repo(".") as repo:
        if pull:
            repo.pull(targets=targets, force=True)
        else:
            repo.checkout(targets=targets, force=True)
    return written


def files_in(commit: str, prefix: str = "") -> list[str]:
    """The paths of the `.dvc` files in `commit` (under `prefix`)."""
    listed = _git("ls-tree", "-r", "--name-only", commit, *([prefix] if prefix else []))
    return [line for line in listed.splitlines() if line.endswith(".dvc")]
