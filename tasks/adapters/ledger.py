"""The deletion ledger: every training sample ever deleted, by which request, in which batch, when.

One CSV file (`data/ledger/ledger.csv`: sample_id, request_id, batch_id, deleted_at,
previous_digest), only ever extended, one batch at a time, and written atomically (temporary
file + rename). Its digest names the set of deletions a model has forgotten. Extending with a
batch that is already recorded does nothing, so a deletion batch that crashed after writing
the ledger can simply run again.

Tamper evidence: the rows of each batch carry `previous_digest`, the digest of the ledger
before that batch, so removing or editing a row of any earlier batch breaks the chain
(`Ledger.verify`). The last batch has no successor to vouch for it: the registry version
made from each batch records the ledger's digest and row count after it (the anchor, checked
by `check_anchor` at the start of every batch).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.adapters.requests import DeletionRequest
from unlearn.data import DataBundle
from unlearn.errors import DuplicateSampleIdError, UnlearnError, preview
from unlearn.splits import Manifest, Split, _split_from_forget, resolve_ids

DEFAULT_LEDGER = Path("data/ledger/ledger.csv")
# The columns a deletion is; the digest covers these alone, so digests recorded before the chain
# column existed still name the same deletions.
DELETION_COLUMNS = ("sample_id", "request_id", "batch_id", "deleted_at")
COLUMNS = (*DELETION_COLUMNS, "previous_digest")


class LedgerError(UnlearnError, ValueError):
    """A ledger file that cannot be read, or a question about a batch it does not hold."""


class LedgerTamperedError(LedgerError):
    """The ledger no longer matches its own chain or what the registry recorded of it."""


@dataclass(frozen=True)
class Deletion:
    """One deleted sample: which request asked, which batch deleted it, when (ISO 8601, UTC)."""

    sample_id: str
    request_id: str
    batch_id: str
    deleted_at: str
    previous_digest: str = ""  # the ledger's digest before this row's batch (the chain)


@dataclass(frozen=True)
class Ledger:
    """The deletions recorded at `path`, oldest first."""

    path: Path = DEFAULT_LEDGER
    rows: tuple[Deletion, ...] = ()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_LEDGER) -> Ledger:
        """The ledger at `path`; an empty one if the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        return cls(path, _parse(path.read_text(), str(path)))

    def deleted_ids(self) -> set[str]:
        return {row.sample_id for row in self.rows}

    def batches(self) -> list[str]:
        """Batch ids in the order they were recorded."""
        return list(dict.fromkeys(row.batch_id for row in self.rows))

    def sample_ids_of(self, batch_ids: str | Iterable[str]) -> list[str]:
        """The samples deleted by the given batches, in ledger order; unknown batches are an error."""
        wanted = {batch_ids} if isinstance(batch_ids, str) else set(batch_ids)
        missing = sorted(wanted - set(self.batches()))
        if missing:
            raise LedgerError(f"{self.path} records no deletions for batches {preview(missing)}")
        return [row.sample_id for row in self.rows if row.batch_id in wanted]

    def before(self, batch_id: str) -> Ledger:
        """The ledger as it was before `batch_id` was recorded (itself if it never was)."""
        batches = self.batches()
        if batch_id not in batches:
            return self
        later = set(batches[batches.index(batch_id) :])
        return replace(self, rows=tuple(r for r in self.rows if r.batch_id not in later))

    def through(self, batch_id: str) -> Ledger:
        """The ledger as it was right after `batch_id` was recorded; an error if it never was."""
        batches = self.batches()
        if batch_id not in batches:
            raise LedgerError(f"{self.path} records no deletions for batch {batch_id!r}")
        kept = set(batches[: batches.index(batch_id) + 1])
        return replace(self, rows=tuple(r for r in self.rows if r.batch_id in kept))

    def verify(self) -> None:
        """Check the chain: each batch's rows carry the digest of every row before them.

        Raises:
            LedgerTamperedError: naming the first batch whose predecessors were removed or edited.
        """
        for batch_id in self.batches():
            recorded = {row.previous_digest for row in self.rows if row.batch_id == batch_id}
            actual = self.before(batch_id).digest()
            if recorded != {actual}:
                shown = ", ".join(sorted(d[:12] for d in recorded))
                raise LedgerTamperedError(
                    f"{self.path} was changed: batch {batch_id}'s rows record the ledger before them as "
                    f"{shown}, but the {len(self.before(batch_id).rows)} rows before them now digest to "
                    f"{actual[:12]} (a row of an earlier batch was removed, added or edited)"
                )

    def check_anchor(self, batch_id: str, digest: str, rows: int | None, where: str) -> None:
        """Check the ledger through `batch_id` against the digest (and row count) `where` recorded.

        Raises:
            LedgerTamperedError: the batch is missing, or its rows differ from what was recorded.
        """
        if batch_id not in self.batches():
            raise LedgerTamperedError(
                f"{self.path} was changed: it lacks batch {batch_id}, which {where} recorded "
                f"({rows if rows is not None else 'some'} rows through it)"
            )
        through = self.through(batch_id)
        if through.digest() != digest:
            count = f"{len(through.rows)} rows now, {rows} recorded" if rows is not None else "rows differ"
            raise LedgerTamperedError(
                f"{self.path} was changed: through batch {batch_id} it digests to {through.digest()[:12]}, "
                f"but {where} recorded {digest[:12]} ({count}): a row was removed, added or edited"
            )

    def extend(self, batch_id: str, requests: Sequence[DeletionRequest], deleted_at: datetime | None = None) -> Ledger:
        """This ledger plus `requests`' samples as batch `batch_id`, unsaved; a recorded batch: no-op."""
        if batch_id in self.batches():
            return self
        stamp = (deleted_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        chain = self.digest()
        new = [Deletion(s, r.request_id, batch_id, stamp, chain) for r in requests for s in r.sample_ids]
        counts = Counter(d.sample_id for d in new)
        deleted = self.deleted_ids()
        repeated = sorted(s for s, n in counts.items() if n > 1 or s in deleted)
        if repeated:
            raise DuplicateSampleIdError(
                f"batch {batch_id} would delete samples already deleted or named twice: "
                f"{preview(repeated)}; run validate_batch first"
            )
        return replace(self, rows=self.rows + tuple(new))

    def to_csv(self, columns: tuple[str, ...] = COLUMNS) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(tuple(getattr(row, column) for column in columns) for row in self.rows)
        return buffer.getvalue()

    def save(self) -> Path:
        """Write the ledger atomically: readers see the old file or the new one, never a part."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", newline="") as out:
                out.write(self.to_csv())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return self.path

    def digest(self) -> str:
        """sha256 of the deletions sorted by sample id: the same deletions give the same digest."""
        ordered = replace(self, rows=tuple(sorted(self.rows, key=lambda r: r.sample_id)))
        return hashlib.sha256(ordered.to_csv(DELETION_COLUMNS).encode()).hexdigest()


def _parse(text: str, source: str) -> tuple[Deletion, ...]:
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader, ()))
    if header not in (COLUMNS, DELETION_COLUMNS):  # the latter: a ledger written before the chain
        raise LedgerError(f"{source}: header {header} is not {COLUMNS}")
    rows = []
    for line, fields in enumerate(reader, start=2):
        if len(fields) != len(header) or not all(fields):
            raise LedgerError(f"{source}, line {line}: expected {len(header)} non-empty fields: {fields}")
        rows.append(Deletion(*fields))
    if header == DELETION_COLUMNS:
        rows = _chained(rows)
    counts = Counter(row.sample_id for row in rows)
    repeated = sorted(s for s, n in counts.items() if n > 1)
    if repeated:
        raise LedgerError(f"{source}: samples recorded more than once: {preview(repeated)}")
    return tuple(rows)


def _chained(rows: list[Deletion]) -> list[Deletion]:
    """Rows of a ledger written before the chain column, given the chain they would have had."""
    chained: list[Deletion] = []
    digests: dict[str, str] = {}
    for row in rows:
        if row.batch_id not in digests:
            digests[row.batch_id] = Ledger(rows=tuple(chained)).digest()
        chained.append(replace(row, previous_digest=digests[row.batch_id]))
    return chained


def validate_batch(
    requests: Iterable[DeletionRequest], train_ids: Iterable[str], ledger: Ledger, batch_id: str | None = None
) -> tuple[list[DeletionRequest], dict[str, str]]:
    """Split a batch's requests into accepted ones and rejected ones with a reason each.

    Requests are taken earliest received first (ties by request id). A request is accepted
    whole or rejected whole: unknown sample ids, samples deleted by an earlier batch and
    samples already named by an earlier request of this batch each reject it, and the
    reason names them, so its sender can resubmit the rest. With `batch_id`, deletions the
    ledger already records for that batch are not counted, so a rerun of a crashed batch
    makes the same decisions.
    """
    known = set(train_ids)
    recorded = {r.sample_id: r for r in (ledger.before(batch_id) if batch_id else ledger).rows}
    taken: dict[str, str] = {}
    accepted, rejected = [], {}
    for request in sorted(requests, key=lambda r: (r.received_at, r.request_id)):
        reasons = _problems(request, known, recorded, taken)
        if reasons:
            rejected[request.request_id] = "; ".join(reasons)
            continue
        accepted.append(request)
        taken.update(dict.fromkeys(request.sample_ids, request.request_id))
    return accepted, rejected


def _problems(
    request: DeletionRequest, known: set[str], recorded: dict[str, Deletion], taken: dict[str, str]
) -> list[str]:
    ids = request.sample_ids
    if not ids:
        return ["names no sample ids"]
    reasons = []
    unknown = [s for s in ids if s not in known]
    if unknown:
        reasons.append(f"unknown sample ids (not in the training set): {preview(unknown)}")
    deleted = [s for s in ids if s in recorded]
    if deleted:
        where = sorted({f"{recorded[s].request_id} in batch {recorded[s].batch_id}" for s in deleted})
        reasons.append(f"already deleted: {preview(deleted)} (by {', '.join(where[:5])})")
    overlap = [s for s in ids if s in taken]
    if overlap:
        earlier = sorted({taken[s] for s in overlap})
        reasons.append(f"also named by earlier request {', '.join(earlier)} of this batch: {preview(overlap)}")
    return reasons


def batch_split(bundle: DataBundle, ledger: Ledger, batch_ids: str | Iterable[str]) -> tuple[Split, Manifest]:
    """The split for a batch, and the manifest of every deletion so far.

    `ledger` must already hold the batch. Forget (Df) is the batch's samples; retain (Dr) is
    the training set without every sample the ledger records; test is unchanged. Samples a purge
    removed from the data set (`tasks.production.purge`) are in neither, nor in the manifest.
    """
    batch_rows = resolve_ids(bundle.train, ledger.sample_ids_of(batch_ids))
    present = set(bundle.train.ids)
    all_rows = resolve_ids(bundle.train, [row.sample_id for row in ledger.rows if row.sample_id in present])
    split = _split_from_forget(bundle, "ids", batch_rows)
    retain = np.setdiff1d(np.arange(len(bundle.train)), all_rows)
    cumulative = Manifest.of(bundle.train, sorted(all_rows))
    return replace(split, retain=Manifest.of(bundle.train, retain)), cumulative
