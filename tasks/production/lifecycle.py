"""A deletion request's true state: from the inbox, the ledger and the registry together.

    pending     waiting in the inbox for the next batch
    claimed     taken by a batch that has not registered a candidate yet
    rejected    refused, with its reason
    unlearned   forgotten by a registered version (`unlearned_in`: its batch's; `version`: the newest)
                that the champion does not descend from: not yet in service
    forgotten   the champion in service is, or descends from, a version that forgot it; `promoted_at`
                and `reviewer` are those of the first version of the champion's lineage that did;
                `purged` names the superseded versions whose files were purged because they held it
    done        the inbox finished it, but no registry version records forgetting it (a registry
                rebuilt without its history): `unlearn train-original` retrains without it

"Done" in the inbox only means a batch registered a candidate; only `forgotten` means the model in
service no longer carries the request's samples. A version forgot a request if its cumulative
`request_ids` tag names it (`tasks.production.deletion.register_candidate`), or, for an original
trained without the ledger's samples, if the ledger records it through the version's anchor batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from tasks.adapters import registry, tracking
from tasks.adapters.ledger import Ledger
from tasks.adapters.params import Params
from tasks.adapters.requests import CLAIMED, DONE, PENDING, REJECTED, RESERVED, Inbox
from tasks.production import deletion
from unlearn.errors import UnlearnError

UNLEARNED, FORGOTTEN = "unlearned", "forgotten"
STATES = (PENDING, CLAIMED, REJECTED, UNLEARNED, FORGOTTEN, DONE)


class UnknownRequestError(UnlearnError, LookupError):
    """A request id the inbox has never seen."""


@dataclass(frozen=True)
class RequestState:
    """Where one request stands; see the module docstring for the states."""

    request_id: str
    state: str
    batch_id: str | None = None
    reason: str | None = None
    unlearned_in: str | None = None
    version: str | None = None
    champion: str | None = None
    promoted_at: str | None = None
    reviewer: str | None = None
    forced: bool | None = None
    purged: tuple[str, ...] = ()  # superseded versions whose files were purged because they held it

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """`req-1: forgotten by champion v4 (unlearned in v3, promoted ... by ana), batch b-1` style."""
        batch = f", batch {self.batch_id}" if self.batch_id else ""
        if self.state == REJECTED:
            return f"{self.request_id}: rejected{batch}: {self.reason or '?'}"
        if self.state == UNLEARNED:
            newest = f"; newest v{self.version}" if self.version != self.unlearned_in else ""
            return (
                f"{self.request_id}: unlearned in candidate v{self.unlearned_in}{newest}, not in service yet "
                f"(champion v{self.champion or '-'}){batch}"
            )
        if self.state == FORGOTTEN:
            forced = " (FORCED)" if self.forced else ""
            promoted = f", promoted {self.promoted_at} by {self.reviewer}{forced}" if self.promoted_at else ""
            purged = f"; purged: {', '.join(f'v{v}' for v in self.purged)}" if self.purged else ""
            return (
                f"{self.request_id}: forgotten by champion v{self.champion} (since v{self.version}{promoted}){batch}"
                f"{purged}"
            )
        if self.state == DONE:
            return f"{self.request_id}: done{batch}, but no registered version records forgetting it"
        return f"{self.request_id}: {self.state}{batch}"


def _forgotten_by(tags: Mapping[str, str], ledger: Ledger) -> set[str]:
    """The requests a version forgot: its cumulative tag, or for an anchored original the ledger through its anchor."""
    named = {r for r in tags.get(registry.REQUEST_IDS_TAG, "").split(",") if r}
    anchor = tags.get(registry.LEDGER_BATCH_TAG)
    if tags.get(registry.KIND_TAG) == registry.ORIGINAL and anchor and anchor in ledger.batches():
        named |= {row.request_id for row in ledger.through(anchor).rows}
    return named


def _lineage(champion: str | None, tags: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The champion and the versions it was made from, newest first."""
    chain: list[str] = []
    current = champion
    while current and current in tags and current not in chain:
        chain.append(current)
        current = tags[current].get(registry.PARENT_TAG)
    return chain


def request_states(
    params: Params, request_ids: Iterable[str] | None = None, inbox: Inbox | None = None
) -> list[RequestState]:
    """The state of each request (default: every one the inbox has seen), from the inbox, ledger and registry.

    Raises:
        UnknownRequestError: a named request the inbox has never seen.
    """
    inbox = inbox or deletion.inbox_of(params)
    ids = list(request_ids) if request_ids is not None else inbox.request_ids()
    ledger = Ledger.load(params.deletion.ledger)
    name = deletion.model_name(params)
    store = tracking.client()
    tags = {str(v.version): dict(v.tags) for v in store.search_model_versions(f"name = '{name}'")}
    forgot = {version: _forgotten_by(version_tags, ledger) for version, version_tags in tags.items()}
    champion_version = registry.version_by_alias(name, registry.CHAMPION, store)
    champion = str(champion_version.version) if champion_version else None
    lineage = _lineage(champion, tags)
    batch_of = {row.request_id: row.batch_id for row in ledger.rows}
    states = []
    for request_id in ids:
        where = inbox.status(request_id)
        if where is None or where.state == RESERVED:
            raise UnknownRequestError(f"no request {request_id!r} in {inbox.uri}")
        batch = where.batch_id or batch_of.get(request_id)
        if where.state in (PENDING, REJECTED) or (where.state == CLAIMED and request_id not in batch_of):
            reason = inbox.rejection_reason(request_id) if where.state == REJECTED else None
            states.append(RequestState(request_id, where.state, batch, reason))
            continue
        covering = sorted((v for v, names in forgot.items() if request_id in names), key=int)
        serving = [v for v in lineage if request_id in forgot[v]]
        if serving:
            first = tags[serving[-1]]
            purged = tuple(sorted(
                (v for v, t in tags.items() if t.get(registry.PURGED_TAG) == "true"
                 and batch in t.get(f"{registry.PURGED_PREFIX}batches", "").split(",")),
                key=int,
            ))  # fmt: skip
            states.append(RequestState(
                request_id, FORGOTTEN, batch, unlearned_in=covering[0], version=serving[-1], champion=champion,
                promoted_at=first.get(f"{registry.PROMOTION_PREFIX}time"),
                reviewer=first.get(f"{registry.PROMOTION_PREFIX}reviewer"),
                forced=first.get(f"{registry.PROMOTION_PREFIX}forced") == "true", purged=purged,
            ))  # fmt: skip
        elif covering:
            states.append(RequestState(request_id, UNLEARNED, batch, unlearned_in=covering[0], version=covering[-1],
                                       champion=champion))  # fmt: skip
        else:
            states.append(RequestState(request_id, where.state if where.state == CLAIMED else DONE, batch))
    return states
