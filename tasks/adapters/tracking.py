"""MLflow tracking: one run per train, prune, unlearn and evaluate step, with what made it.

A run records its flattened configuration (params), per-epoch and final metrics, the split
manifests it read (dataset inputs with contexts retain / forget / test and their digests),
tags (git commit, DVC data digests, data set, architecture, device) and artefacts.

Where it goes is configuration only:
  MLFLOW_TRACKING_URI    default `sqlite:///<cwd>/mlflow.db`; a server URI in production
  UNLEARN_ARTIFACT_ROOT  default `mlartifacts/` beside the sqlite file (or in the working
                         folder); `s3://bucket/prefix` in production (boto3; set
                         MLFLOW_S3_ENDPOINT_URL for an S3-compatible server). With a server
                         URI and no root, the server's `--artifacts-destination` decides.
  MLFLOW_EXPERIMENT_NAME default `unlearn`: the experiment of a run opened without one
                         (`start_run`, the registry called outside a flow); stages and flows
                         go to params.yaml's `tracking.experiment` (see `run`)
Nothing credential-like is ever logged: see `sanitize`. Print the tracking URI as
`display_uri()`, which blanks out its password.

Opening a run: `run(params, kind, name, config, **tags)`, the one entry point of every stage
and flow (`tasks.adapters.workspace.tracked` is the same function, imported lazily). It yields a tracker:
a `Tracker` (an active MLflow run) when `params.tracking.enabled`, else a `NoTracker` with the
same methods doing nothing, so callers never branch. Runs go to experiment
`params.tracking.experiment` and carry the tags dataset (the data set's name), arch (the
preset's) and device besides those of `run_tags`. `start_run` is the low-level helper beneath it.

The model registry is the exception: `tracking.enabled` governs the study's and the flows'
runs, but registering a version needs a logged model, hence a run. So `tasks.adapters.registry` always
records the models it registers: inside the active run where there is one (a flow's tracked
run), else in a `register` run of its own, opened with `start_run` in the experiment its
caller passes (the flows pass `params.tracking.experiment`), even with tracking disabled.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from tasks.adapters.params import Params, flatten
from tasks.adapters.workspace import device, preset
from unlearn.errors import ConfigError, UnlearnError
from unlearn.splits import Manifest, Split
from unlearn.train import History

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "mlflow.db"
DEFAULT_ARTIFACT_FOLDER = "mlartifacts"
DEFAULT_EXPERIMENT = "unlearn"
ARTIFACT_ROOT_ENV = "UNLEARN_ARTIFACT_ROOT"
RUN_KINDS = (
    "prepare",
    "split",
    "validate",
    "train",
    "prune",
    "unlearn",
    "evaluate",
    "register",
    "report",
    "tune",
)
SPLIT_CONTEXTS = ("retain", "forget", "test")

KIND_TAG = "unlearn.kind"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the tag the MLflow UI shows as the source version
GIT_DIRTY_TAG = "git.dirty"
# MLflow's dataset digest column holds 36 characters; the full sha256 goes in an input tag.
DATASET_DIGEST_LENGTH = 32
_BATCH = 1000  # MLflow's limits per log_batch call: metrics, and params plus tags
_PARAMS_BATCH = 100


class TrackingError(UnlearnError, RuntimeError):
    """The tracking store cannot be reached or refuses what is logged to it."""


# --- configuration -------------------------------------------------------------------------


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a sqlite database `mlflow.db` in the working folder."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return f"sqlite:///{Path(DEFAULT_DATABASE).resolve()}"


def _sqlite_folder(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent


def artifact_location(experiment: str, uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artefacts; None lets a tracking server decide."""
    uri = uri or tracking_uri()
    root = os.environ.get(ARTIFACT_ROOT_ENV, "").strip()
    if root:
        return f"{root.rstrip('/')}/{experiment}"
    if urlparse(uri).scheme in ("http", "https", "databricks"):
        return None
    folder = _sqlite_folder(uri) or Path.cwd()
    return (folder / DEFAULT_ARTIFACT_FOLDER / experiment).as_uri()


def experiment_name() -> str:
    """MLFLOW_EXPERIMENT_NAME, or `unlearn`."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT


def client() -> MlflowClient:
    """A client of the configured tracking store (the registry lives in the same store)."""
    return MlflowClient(tracking_uri=tracking_uri())


# The MLflow UI opens an experiment on the view its kind names; unset, it may guess the GenAI one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def ensure_experiment(name: str | None = None) -> str:
    """Point MLflow at the configured store and return the id of experiment `name`, creating it."""
    name = name or experiment_name()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    store = MlflowClient(tracking_uri=uri)
    try:
        existing = store.get_experiment_by_name(name)
        if existing is not None and existing.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments "
                f"restore --experiment-id {existing.experiment_id}`) or set MLFLOW_EXPERIMENT_NAME"
            )
        if existing is not None:
            if existing.tags.get(EXPERIMENT_KIND_TAG) is None:
                store.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
            return existing.experiment_id
        return store.create_experiment(
            name, artifact_location=artifact_location(name, uri), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS):  # created meanwhile
            return store.get_experiment_by_name(name).experiment_id
        message = redact(str(error))
        cause = error if message == str(error) else None  # a cause quoting the password stays out
        raise TrackingError(f"MLflow store {display_uri(uri)} refused experiment {name!r}: {message}") from cause


# --- sanitising ----------------------------------------------------------------------------
#
# Keys are judged by their words, not by substrings: `_key_words` splits a key at
# non-alphanumerics and camelCase boundaries (`dbPassword` -> db, password;
# `AWS_SECRET_ACCESS_KEY` -> aws, secret, access, key), so `monkey`, `keyboard`, `author` and
# `tokenizer` are ordinary words while `pwd`, `auth` and `x-api-key` are credentials.

REDACTED = "***"
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
SECRET_WORDS = frozenset(
    {
        "password",
        "passwords",
        "passwd",
        "pwd",
        "passphrase",
        "passcode",
        "secret",
        "secrets",
        "token",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "cred",
        "creds",
        "cookie",
        "cookies",
        "session",
        "sessionid",
        "apikey",
        "apikeys",
        "accesskey",
        "secretkey",
        "privatekey",
        "signature",
        "bearer",
        "jwt",
        "otp",
        "hmac",
    }
)
# One-word compounds ending so are credentials too: `pgpassword`, `clientsecret`, `hftoken`.
SECRET_SUFFIXES = ("password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey")
# `pass` is a credential only as the last word (`db_pass`), not in `pass_rate` or `pass_at_k`.
LAST_WORD_SECRETS = frozenset({"pass"})
# `key` / `keys` is a credential only right after one of these (`api_key`, `AWS_ACCESS_KEY_ID`).
KEY_QUALIFIERS = frozenset(
    {
        "api",
        "access",
        "private",
        "secret",
        "signing",
        "encryption",
        "ssh",
        "master",
        "client",
        "account",
        "storage",
        "subscription",
        "license",
    }
)
# A key ending in one of these names a property of a credential, not the credential:
# `session_count`, `token_type`, `password_min_length`, `auth_enabled`.
PROPERTY_WORDS = frozenset(
    {
        "count",
        "length",
        "len",
        "size",
        "limit",
        "min",
        "max",
        "ttl",
        "timeout",
        "expiry",
        "expires",
        "enabled",
        "required",
        "type",
        "mode",
        "method",
    }
)


def _key_words(key: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(key)]


def is_secret_key(key: str) -> bool:
    """Whether a param, tag or field name names a credential, judged word by word.

    The key is split into lower-case words at non-alphanumerics and camelCase boundaries
    (`dbPassword` -> db, password; `mlflow.tracking.password`; `x-api-key`). It is secret if
    - a word is in `SECRET_WORDS` (password, passwd, pwd, passphrase, secret, token, auth,
      authorization, credential(s), cookie, session, apikey, privatekey, signature, bearer, jwt,
      ...) or is one word ending in `SECRET_SUFFIXES` (`pgpassword`, `clientsecret`, `hftoken`);
    - its last word is `pass` (`db_pass`; but `pass_rate` is not);
    - a word `key`/`keys` follows one of `KEY_QUALIFIERS` (api, access, private, secret,
      signing, encryption, ssh, master, client, ...): `api_key`, `AWS_ACCESS_KEY_ID`;
    unless its last word is in `PROPERTY_WORDS` (count, length, size, limit, ttl, timeout,
    type, mode, enabled, ...), which names a property of a credential: `session_count`,
    `token_type`. Trailing numbers are ignored (`password2`). So `monkey`, `keyboard`, `key`,
    `sort_key`, `public_key`, `author`, `passes`, `tokenizer` and `max_tokens` are ordinary.
    """
    words = _key_words(key)
    while words and words[-1].isdigit():
        words.pop()
    if not words or words[-1] in PROPERTY_WORDS:
        return False
    if words[-1] in LAST_WORD_SECRETS:
        return True
    for before, word in zip([""] + words, words, strict=False):
        if word in SECRET_WORDS or word.endswith(SECRET_SUFFIXES):
            return True
        if word in ("key", "keys") and before in KEY_QUALIFIERS:
            return True
    return False


_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
# scheme://user:password@ : the password runs to the last `@` before the path, query or fragment.
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s/?#@:]*):[^\s/?#]*@", re.IGNORECASE)
# scheme://userinfo@ without a colon: a user name (kept) or a token (blanked), see `_token_like`.
_URI_USER = re.compile(r"(?P<head>\b[a-z][a-z0-9+.\-]*://)(?P<user>[^\s/?#@:]+)@", re.IGNORECASE)
# Authorization / Cookie headers: the whole value (to the closing quote or the end of the line).
_HEADER = re.compile(
    r"(?P<head>\b(?:authorization|set-cookie|cookie)(?P<q>[\"']?)[ \t]*[:=][ \t]*(?P<vq>[\"']?))"
    r"(?P<value>[^\r\n\"']*[^\s\"'])",
    re.IGNORECASE,
)
_SCHEME_TOKEN = re.compile(r"(?P<head>\b(?P<scheme>(?i:bearer|basic))[ \t]+)(?P<token>[A-Za-z0-9\-._~+/]{8,}=*)")
# key=value, key: value, "key": "value", key='value'; redacted when `is_secret_key(key)`. The
# value is matched ahead only, so keys inside another key's value (a URI's query) are found too.
_PAIR = re.compile(
    r"(?<![\w./:@%+])(?P<q>[\"']?)(?P<key>[A-Za-z_][\w.\-]*)(?P=q)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?=(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[^\s&;\"'<>]+))"
)
# A 40-character AWS-style secret shortly after the word secret (`AWS secret key: wJalr...`).
_AWS_SECRET = re.compile(
    r"(?P<head>(?:secrets?|Secrets?|SECRETS?)(?![a-z])[^\n]{0,30}?)(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)
_AWS_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# Tokens recognisable by their prefix: GitHub, GitLab, Slack, OpenAI, Hugging Face, JWTs.
_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|sk-(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{20,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)"
)


def _token_like(text: str) -> bool:
    """A known token, an AWS key id, or 20+ characters of [A-Za-z0-9_-] mixing letters and digits."""
    if _KNOWN_TOKEN.fullmatch(text) or _AWS_ACCESS_KEY_ID.fullmatch(text):
        return True
    return (
        len(text) >= 20
        and re.fullmatch(r"[A-Za-z0-9_\-]+", text) is not None
        and any(c.isdigit() for c in text)
        and any(c.isalpha() for c in text)
    )


def _scheme_token(match: re.Match[str]) -> str:
    """`Bearer ***` / `Basic ***`, unless the word after the scheme reads as prose."""
    token = match["token"]
    basic = match["scheme"].lower() == "basic"  # base64 of user:password, padded to 4n characters
    base64 = len(token) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", token) is not None
    prose = re.fullmatch(r"[a-z]+", token) is not None or (basic and not base64)
    return match[0] if prose else f"{match['head']}{REDACTED}"


def _redact_pairs(text: str) -> str:
    """`text` with the values of its secret `key=value` / `key: value` pairs blanked out."""
    parts, done = [], 0
    for match in _PAIR.finditer(text):
        if match.start() < done or not is_secret_key(match["key"]):
            continue
        value = match["value"]
        quote = value[0] if value[0] in "\"'" else ""
        # a quoted value keeps its quotes; closing brackets and a trailing comma after an
        # unquoted one belong to the text around the pair
        tail = quote or value[len(value.rstrip(",)]}")) :]
        parts += [text[done : match.end()], f"{quote}{REDACTED}{tail}"]
        done = match.end() + len(value)
    return "".join([*parts, text[done:]])


def redact(value: str) -> str:
    """`value` with the credentials inside it replaced by `***`; ordinary text is kept as it is.

    Blanked out: private key blocks; the password of a URI's userinfo (`postgresql://user:pw@host`
    -> `postgresql://user:***@host`, the user name kept); a userinfo without a colon only when it
    looks like a token (`https://ghp_...@github.com` -> `https://***@github.com`, while
    `ssh://git@github.com` stays); Authorization and Cookie header values; `Bearer <token>` and
    `Basic <base64>`; values of secret keys (`is_secret_key`) in `key=value`, `key: value`,
    `"key": "value"` and query strings (`?token=abc&x=1` -> `?token=***&x=1`); a 40-character
    AWS-style secret shortly after the word secret; AWS access key ids (AKIA..., ASIA...) and
    tokens with a known prefix (ghp_, github_pat_, glpat-, xoxb-, sk-, hf_, JWTs).
    Kept: `lr=0.1`, `key=value`, `monkey=3`, URIs without credentials.
    """
    value = _PRIVATE_KEY.sub(REDACTED, value)
    value = _URI_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", value)
    value = _URI_USER.sub(lambda m: f"{m['head']}{REDACTED}@" if _token_like(m["user"]) else m[0], value)
    value = _HEADER.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _SCHEME_TOKEN.sub(_scheme_token, value)
    value = _redact_pairs(value)
    value = _AWS_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _AWS_ACCESS_KEY_ID.sub(REDACTED, value)
    return _KNOWN_TOKEN.sub(REDACTED, value)


def display_uri(uri: str | None = None) -> str:
    """`uri` (the configured tracking URI by default) fit to print, log or show in an artefact.

    The password of its userinfo and any token in it are replaced by `***`; the rest (scheme,
    user name, host, port, path) is kept: `postgresql://mlflow:***@db:5432/mlflow`.
    """
    return redact(tracking_uri() if uri is None else uri)


def sanitize(values: Mapping[str, Any], limit: int = MAX_TAG_VAL_LENGTH) -> dict[str, str]:
    """Params or tags as strings fit to log: credential-like keys dropped, values redacted.

    Keys for which `is_secret_key` holds are left out (a warning names them, never their values);
    every other value is passed through `redact`.

    Args:
        limit: the longest value the store takes; longer values are cut (and say so).
    """
    dropped = sorted(key for key in values if is_secret_key(key))
    if dropped:
        log.warning("not logging credential-like keys: %s", ", ".join(dropped))
    clean = {}
    for key, value in values.items():
        if key in dropped:
            continue
        text = redact(str(value))
        clean[key] = text if len(text) <= limit else text[: limit - 12] + "...[cut]"
    return clean


# --- runs ----------------------------------------------------------------------------------


def git_commit(folder: Path | None = None) -> dict[str, str]:
    """Tags naming the git commit of the code (and whether it had local changes); {} outside git."""
    folder = folder or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(bool(status.strip())).lower()}


def run_tags(
    kind: str,
    *,
    dataset: str | None = None,
    arch: str | None = None,
    device: str | None = None,
    data_digests: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The tags every run carries: its kind, git commit, data set, architecture, device, DVC digests."""
    tags = {KIND_TAG: kind, **git_commit()}
    for key, value in (("dataset", dataset), ("arch", arch), ("device", device)):
        if value is not None:
            tags[key] = str(value)
    tags.update({f"dvc.{path}": digest for path, digest in (data_digests or {}).items()})
    return tags


@contextmanager
def start_run(
    kind: str,
    name: str | None = None,
    params: Any = None,
    tags: Mapping[str, Any] | None = None,
    *,
    experiment: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """A run of `kind` (train, prune, unlearn, evaluate, ...) with its params and tags logged.

    Nested inside another active run, it becomes that run's child. A run that raises ends FAILED.

    Args:
        params: a pydantic model, dataclass or dict; flattened to {"a.b": value}.
        tags: merged over `run_tags(kind)`; see `run_tags` for dataset, arch, device, DVC digests.
    """
    if kind not in RUN_KINDS:
        raise ConfigError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
    experiment_id = ensure_experiment(experiment)
    all_tags = sanitize({**run_tags(kind), **(tags or {})})
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=all_tags, nested=nested) as run:
        if params is not None:
            log_params(params)
        yield run


class Tracker:
    """The active MLflow run of one unit of work: what a stage or flow logs goes through it.

    Its methods are the module's logging functions, on this run (a `TrackingError` once the
    run has ended, rather than logging to another run).
    """

    enabled = True

    def __init__(self, run: mlflow.ActiveRun):
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.info.run_id

    @property
    def experiment_id(self) -> str:
        return self._run.info.experiment_id

    def _active(self) -> None:
        active = mlflow.active_run()
        if active is None or active.info.run_id != self._run.info.run_id:
            raise TrackingError(f"MLflow run {self._run.info.run_id} is not the active run: log inside its `with`")

    def log_params(self, params: Any) -> dict[str, str]:
        self._active()
        return log_params(params)

    def set_tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        self._active()
        return set_tags(tags)

    def log_history(self, history: History, prefix: str = "") -> None:
        self._active()
        log_history(history, prefix)

    def log_evaluation(self, metrics: Mapping[str, float], prefix: str = "", step: int = 0) -> None:
        self._active()
        log_evaluation(metrics, prefix, step)

    def log_split(self, split: Split, name: str, source: str | Path | None = None) -> dict[str, str]:
        self._active()
        return log_split(split, name, source)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> list[str]:
        self._active()
        return log_artifacts(paths, artifact_path)


class NoTracker:
    """What `run` yields with tracking disabled: `Tracker`'s methods, logging nothing."""

    enabled = False
    run_id: str | None = None
    experiment_id: str | None = None

    def log_params(self, params: Any) -> dict[str, str]:
        return {}

    def set_tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        return {}

    def log_history(self, history: History, prefix: str = "") -> None:
        return None

    def log_evaluation(self, metrics: Mapping[str, float], prefix: str = "", step: int = 0) -> None:
        return None

    def log_split(self, split: Split, name: str, source: str | Path | None = None) -> dict[str, str]:
        return {}

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> list[str]:
        return []


@contextmanager
def run(params: Params, kind: str, name: str, config: Any = None, /, **tags: Any) -> Iterator[Tracker | NoTracker]:
    """A tracked run of `kind` around one unit of a stage's or flow's work, per `params.tracking`.

    Yields a `Tracker` of a new run in experiment `params.tracking.experiment` (a child of the
    active run, if any) when `params.tracking.enabled`, else a `NoTracker`. The run carries
    `run_tags(kind)`, the data set's name (`DataParams.dataset`: the preset's data set or the
    user's own, as the registered model is named), the preset's arch and the device, then `tags`
    (which win).

    Args:
        config: what made the run (a pydantic model, dataclass or dict), logged as its params.
        tags: more tags; any name, `params` and `kind` included (the arguments are positional).
    """
    if not params.tracking.enabled:
        yield NoTracker()
        return
    standard = {"dataset": params.data.dataset, "arch": preset(params).arch, "device": str(device())}
    with start_run(
        kind, name, params=config, tags={**standard, **tags}, experiment=params.tracking.experiment
    ) as active:
        yield Tracker(active)


def active_run_id() -> str:
    """The id of the active run; a `TrackingError` outside `start_run`."""
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call this inside `tasks.adapters.tracking.start_run(...)`")
    return run.info.run_id


def _log_batch(metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()) -> None:
    """One request per batch MLflow accepts (1,000 metrics; 100 params and tags)."""
    run_id = active_run_id()
    store = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    for start in range(0, len(metrics), _BATCH):
        store.log_batch(run_id, metrics=list(metrics[start : start + _BATCH]))
    for start in range(0, max(len(params), len(tags)), _PARAMS_BATCH):
        store.log_batch(
            run_id,
            params=list(params[start : start + _PARAMS_BATCH]),
            tags=list(tags[start : start + _PARAMS_BATCH]),
        )


def log_params(params: Any) -> dict[str, str]:
    """Log a pydantic model, dataclass or dict as flattened params; returns what was logged."""
    flat = sanitize(flatten(params), MAX_PARAM_VAL_LENGTH)
    _log_batch(params=[Param(key, value) for key, value in flat.items()])
    return flat


def set_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tag the active run (sanitised); returns what was set."""
    clean = sanitize(tags)
    _log_batch(tags=[RunTag(key, value) for key, value in clean.items()])
    return clean


def log_history(history: History, prefix: str = "") -> None:
    """Per-epoch loss, accuracy, lr and seconds (step = epoch), and the total training seconds."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{name}", float(value), now, record.epoch)
        for record in history.epochs
        for name, value in (
            ("loss", record.loss),
            ("accuracy", record.accuracy),
            ("lr", record.lr),
            ("epoch_seconds", record.seconds),
        )
    ]
    metrics.append(Metric(f"{prefix}train_seconds", float(history.seconds), now, 0))
    _log_batch(metrics=metrics)


def log_evaluation(metrics: Mapping[str, float], prefix: str = "", step: int = 0) -> None:
    """Final metrics (UA, MIA_efficacy, RA, TA, RTE_seconds, avg_gap, sparsity, ...) of the run."""
    now = int(time.time() * 1000)
    _log_batch(metrics=[Metric(f"{prefix}{name}", float(value), now, step) for name, value in metrics.items()])


def manifest_frame(manifest: Manifest) -> pd.DataFrame:
    """A manifest as a DataFrame with columns sample_id, index, label."""
    return pd.DataFrame(
        {
            "sample_id": list(manifest.sample_ids),
            "index": list(manifest.indices),
            "label": list(manifest.labels),
        }
    )


def split_digest_tags(digests: Mapping[str, str]) -> dict[str, str]:
    """`split.retain.digest`, `split.forget.digest`, `split.test.digest` and `split.digest` (the whole)."""
    return {"split.digest" if part == "split" else f"split.{part}.digest": value for part, value in digests.items()}


def log_split(split: Split, name: str, source: str | Path | None = None) -> dict[str, str]:
    """Log a split's retain / forget / test manifests as dataset inputs; returns the digest tags.

    Args:
        name: the split's name (its scenario or batch), used as `<name>/<part>` dataset names.
        source: the folder the manifests were saved in (`Split.save`), recorded as their source.
    """
    tags = {**split_digest_tags(split.digests()), "split.scenario": split.scenario}
    whole = split.digest()
    datasets, input_tags = [], []
    for part in SPLIT_CONTEXTS:
        manifest: Manifest = getattr(split, part)
        digest = manifest.digest()
        part_source = None if source is None else str(Path(source) / f"{part}.csv")
        datasets.append(_manifest_dataset(manifest, f"{name}/{part}", part_source, digest))
        input_tags.append({"digest": digest, "split_digest": whole})
    with warnings.catch_warnings():  # ids and labels are ints: MLflow warns of missing values it cannot hold
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
        mlflow.log_inputs(datasets, contexts=list(SPLIT_CONTEXTS), tags_list=input_tags)  # one request
    set_tags(tags)
    return tags


# A stage logs the same split in each of its runs: its datasets (with the schema MLflow infers from
# them, the costly part) are made once per process. Keyed by the manifest's digest, so never stale.
_DATASETS: dict[tuple[str, str, str | None], Any] = {}


def _manifest_dataset(manifest: Manifest, name: str, source: str | None, digest: str) -> Any:
    """The MLflow dataset of one manifest (a pandas frame of ids, indices and labels), cached."""
    key = (digest, name, source)
    if key not in _DATASETS:
        with warnings.catch_warnings():  # local paths match two source types
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            _DATASETS[key] = mlflow.data.from_pandas(
                manifest_frame(manifest), source=source, name=name, targets="label",
                digest=digest[:DATASET_DIGEST_LENGTH],
            )  # fmt: skip
    return _DATASETS[key]


def log_artifacts(paths: Iterable[str | Path], artifact_path: str | None = None) -> list[str]:
    """Upload files and folders (checkpoint, report, figures) to the active run's artefacts."""
    active_run_id()
    logged = []
    for path in map(Path, paths):
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        else:
            raise TrackingError(f"artefact {path} does not exist: write it before logging it")
        logged.append(f"{artifact_path}/{path.name}" if artifact_path else path.name)
    return logged
