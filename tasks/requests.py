"""Deletion requests and the inbox they wait in: a local folder or an S3 prefix, one interface.

A request file moves through the inbox's folders:

    pending/<request_id>.json
      -> claimed/<batch_id>/<request_id>.json  (claim: every pending request, as one batch)
      -> done/<batch_id>/<request_id>.json      (complete)
      or rejected/<request_id>.json + rejected/<request_id>.reason.txt  (reject)

Bookkeeping objects beside them make the moves safe without a server:
`ids/<request_id>` reserves a request id for ever (created exclusively by `submit`),
`batches/<batch_id>` reserves a batch id for ever, and `claims/<request_id>` (created
exclusively, holding the batch id) is what claims a request. The file move that follows is
only housekeeping: anyone who finds a pending file with a claim marker finishes the move
into the marker's batch, so a claimer that crashes between the two steps loses nothing.

Guarantees. Exclusive creation is `os.link` of a complete temporary file on a local folder
and a conditional put (`If-None-Match: *`) on S3, so on both backends every request is
claimed by at most one batch, even by claimers racing on different machines; a batch id
and a request id are each used once. A local folder also serialises whole claims with an
`fcntl` lock, so concurrent claimers there each take a consistent snapshot; on S3 two
concurrent claimers may split the pending requests between them (each request still lands
in exactly one batch). moto's server checks the condition and writes in two steps, so
only real S3 (or another store with atomic conditional writes) gives the S3 guarantee.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from unlearn.errors import UnlearnError, preview

log = logging.getLogger(__name__)

DEFAULT_INBOX = "data/requests"
MAX_REQUEST_BYTES = 1 << 20
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
PENDING, CLAIMED, DONE, REJECTED, RESERVED = "pending", "claimed", "done", "rejected", "reserved"


class InboxError(UnlearnError):
    """The inbox cannot do what was asked (bad location, missing bucket, wrong state)."""


class InvalidRequestError(InboxError, ValueError):
    """A deletion request (or an id) that does not follow the schema."""


class RequestExistsError(InboxError, FileExistsError):
    """A request id that the inbox has already seen."""


class BatchExistsError(InboxError, FileExistsError):
    """A batch id that has already been used."""


class RequestNotClaimedError(InboxError, LookupError):
    """A request that is not in the batch it was named with."""


class RequestTooLargeError(InboxError, ValueError):
    """A request file over the inbox's size limit."""


def check_id(value: str, what: str = "request id") -> str:
    """`value` if it is a safe id (1-128 of A-Z a-z 0-9 . _ -, not starting with '.'), else raise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value.startswith("."):
        raise InvalidRequestError(
            f"{what} {value!r} is not valid: use 1 to 128 characters of A-Z a-z 0-9 . _ -, not starting with '.'"
        )
    return value


def _valid_request_id(value: str) -> str:
    try:
        return check_id(value)
    except InvalidRequestError as error:
        raise ValueError(str(error)) from None


def _valid_sample_ids(values: list[str]) -> list[str]:
    blank = [i for i, v in enumerate(values) if not v.strip()]
    if blank:
        raise ValueError(f"sample ids at positions {blank[:10]} are empty")
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise ValueError(f"sample ids named more than once: {preview(repeated)}")
    return values


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeletionRequest(BaseModel):
    """A right-to-be-forgotten request: the training samples one data subject wants deleted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, AfterValidator(_valid_request_id)]
    sample_ids: Annotated[list[str], Field(min_length=1), AfterValidator(_valid_sample_ids)]
    received_at: Annotated[AwareDatetime, AfterValidator(lambda t: t.astimezone(UTC))] = Field(default_factory=_utc_now)
    subject: str | None = None
    reason: str | None = None

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors())


def make_request(**fields) -> DeletionRequest:
    """A validated request; schema errors raise `InvalidRequestError` naming each field."""
    try:
        return DeletionRequest.model_validate(fields)
    except ValidationError as error:
        raise InvalidRequestError(f"invalid deletion request: {_problems(error)}") from None


def parse(raw: bytes, expected_id: str | None = None) -> DeletionRequest | str:
    """The request in `raw` JSON, or the reason it is not one (never raises on bad content)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not valid UTF-8 JSON: {error}"
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    try:
        request = DeletionRequest.model_validate(data)
    except ValidationError as error:
        return f"schema: {_problems(error)}"
    if expected_id is not None and request.request_id != expected_id:
        return f"request_id {request.request_id!r} does not match its file name {expected_id!r}.json"
    return request


def new_request_id() -> str:
    """`req-20250131T120000Z-1a2b3c4d`: sortable by time, unique by its random tail."""
    return f"req-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def new_batch_id() -> str:
    """`batch-20250131T120000Z-1a2b3c4d`."""
    return f"batch-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Location:
    """Where a request is: its state and, once claimed, its batch."""

    state: str
    batch_id: str | None = None


# --- storage backends: the few primitives the inbox needs -------------------------------------


class LocalStore:
    """Keys as files under a root folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _temp(self, folder: Path, data: bytes) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".tmp-{uuid.uuid4().hex}"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temp

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist; False if it does (atomic, complete content)."""
        path = self._path(key)
        temp = self._temp(path.parent, data)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path.parent, data), path)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def move(self, source: str, target: str) -> bool:
        """Rename `source` to `target`; False if `source` is gone."""
        self._path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self._path(source), self._path(target))
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):  # an emptied batch folder is clutter, not state
            self._path(source).parent.rmdir()
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def children(self, folder: str) -> list[str]:
        """Names directly inside `folder` (files and folders), hidden ones left out."""
        try:
            return sorted(n for n in os.listdir(self._path(folder)) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise claims on this folder; the kernel drops the lock if its holder dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".claim.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class S3Store:
    """Keys as objects under `s3://bucket/prefix/`."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}"
        # With no endpoint_url boto3 reads AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound", "PreconditionFailed", "ConditionalRequestConflict"}:
                raise
            raise InboxError(f"S3 {method} on {self.uri} failed: {error}") from error
        except BotoCoreError as error:
            raise InboxError(f"S3 {method} on {self.uri} failed: {error}") from error

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("put_object", Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as error:  # 409: a concurrent conditional write; it or a retry wins
            if error.response.get("Error", {}).get("Code") in {
                "PreconditionFailed",
                "ConditionalRequestConflict",
            }:
                return False
            raise

    def put(self, key: str, data: bytes) -> None:
        self._call("put_object", Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self._call("get_object", Key=self._key(key))["Body"].read()
        except ClientError:
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self._call("head_object", Key=self._key(key))["ContentLength"]
        except ClientError:
            return None

    def move(self, source: str, target: str) -> bool:
        """Copy then delete (S3 has no rename); False if `source` is gone."""
        from botocore.exceptions import ClientError

        try:
            self._call(
                "copy_object",
                Key=self._key(target),
                CopySource={"Bucket": self.bucket, "Key": self._key(source)},
            )
        except ClientError:
            return False
        self.delete(source)
        return True

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))

    def children(self, folder: str) -> list[str]:
        start = self._key(folder) + "/"
        names: set[str] = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start, Delimiter="/")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                names.update(p["Prefix"][len(start) :].rstrip("/") for p in page.get("CommonPrefixes", []))
                names.update(o["Key"][len(start) :] for o in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise InboxError(f"cannot list {self.uri}/{folder}: {error}") from error
        return sorted(n for n in names if n and not n.startswith("."))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield  # per-request claim markers are the exclusion on S3


# --- the inbox ----------------------------------------------------------------------------------


class Inbox:
    """Deletion requests waiting, claimed in batches, done or rejected (see the module docstring)."""

    def __init__(self, store: LocalStore | S3Store, max_bytes: int = MAX_REQUEST_BYTES):
        self.store, self.max_bytes = store, max_bytes

    @property
    def uri(self) -> str:
        return self.store.uri

    def submit(self, request: DeletionRequest) -> None:
        """Add `request` to pending; an id the inbox has seen before is refused."""
        request_id = request.request_id
        body = request.to_json()
        if len(body) > self.max_bytes:
            raise RequestTooLargeError(
                f"request {request_id} is {len(body)} bytes, over the inbox limit of {self.max_bytes}: "
                "split its sample ids over several requests"
            )
        where = self.status(request_id)
        if where is not None or not self.store.create(f"ids/{request_id}", b""):
            state = where.state if where else RESERVED
            raise RequestExistsError(
                f"request id {request_id!r} already exists in {self.uri} ({state}): submit under a new request id"
            )
        try:
            created = self.store.create(f"pending/{request_id}.json", body)
        except BaseException:
            self.store.delete(f"ids/{request_id}")  # a failed submit must not burn the id
            raise
        if not created:  # a file put into pending/ by hand since the check
            raise RequestExistsError(f"request id {request_id!r} already exists in {self.uri} (pending)")

    def pending(self) -> list[str]:
        """Ids of the requests waiting to be claimed, sorted."""
        ids = []
        for name in self.store.children(PENDING):
            request_id = name.removesuffix(".json")
            if not name.endswith(".json") or not ID_PATTERN.fullmatch(request_id):
                log.warning("%s/pending/%s is not <request id>.json; rename it to be claimed", self.uri, name)
            elif self.store.size(f"claims/{request_id}") is None:
                ids.append(request_id)
        return ids

    def claim(self, batch_id: str) -> list[str]:
        """Claim every pending request into batch `batch_id`; the ids this batch got."""
        check_id(batch_id, "batch id")
        with self.store.lock():
            self._settle()
            waiting = self.pending()
            if not waiting:
                return []
            stamp = json.dumps({"batch_id": batch_id, "claimed_at": _utc_now().isoformat()})
            if not self.store.create(f"batches/{batch_id}", stamp.encode()):
                raise BatchExistsError(f"batch id {batch_id!r} was used before in {self.uri}: use a new one")
            claimed = [r for r in waiting if self.store.create(f"claims/{r}", batch_id.encode())]
            for request_id in claimed:  # a False move means a helper already moved it for us
                self.store.move(f"pending/{request_id}.json", f"claimed/{batch_id}/{request_id}.json")
            self._settle()  # requests other claimers won while we listed them
        return claimed

    def _settle(self) -> None:
        """Finish the move of requests whose claim marker exists but which are still in pending/."""
        for name in self.store.children(PENDING):
            request_id = name.removesuffix(".json")
            if name.endswith(".json") and self.store.size(f"claims/{request_id}") is not None:
                batch_id = self.store.get(f"claims/{request_id}").decode()
                self.store.move(f"pending/{name}", f"claimed/{batch_id}/{name}")

    def claimed_batches(self) -> list[str]:
        """Batches with requests claimed but neither done nor rejected: a crashed run's to resume."""
        self._settle()
        return [b for b in self.store.children(CLAIMED) if self.claimed_requests(b)]

    def claimed_requests(self, batch_id: str) -> list[str]:
        """Ids of the requests still claimed by `batch_id`."""
        names = self.store.children(f"claimed/{check_id(batch_id, 'batch id')}")
        return [n.removesuffix(".json") for n in names if n.endswith(".json")]

    def _claimed_key(self, batch_id: str, request_id: str) -> str:
        return f"claimed/{check_id(batch_id, 'batch id')}/{check_id(request_id)}.json"

    def read_raw(self, batch_id: str, request_id: str) -> bytes:
        """The bytes of a claimed request; a file over the size limit is refused unread."""
        key = self._claimed_key(batch_id, request_id)
        size = self.store.size(key)
        if size is None:
            raise RequestNotClaimedError(f"request {request_id} is not claimed by batch {batch_id}")
        if size > self.max_bytes:
            raise RequestTooLargeError(
                f"request file is {size} bytes, over the inbox limit of {self.max_bytes}; it was not read"
            )
        return self.store.get(key)

    def read(self, batch_id: str, request_id: str) -> DeletionRequest | str:
        """A claimed request, or the reason it cannot be one (too large, malformed, schema)."""
        try:
            raw = self.read_raw(batch_id, request_id)
        except RequestTooLargeError as error:
            return str(error)
        return parse(raw, expected_id=request_id)

    def reject(self, batch_id: str, request_id: str, reason: str) -> None:
        """Move a claimed request to rejected/, with its reason beside it; a repeat is a no-op."""
        key = self._claimed_key(batch_id, request_id)
        if self.store.size(key) is None:
            if self.status(request_id) == Location(REJECTED, batch_id):
                return
            raise RequestNotClaimedError(f"request {request_id} is not claimed by batch {batch_id}")
        # The reason first: a crash between the two leaves the request claimed, to be rejected again.
        self.store.put(f"rejected/{request_id}.reason.txt", reason.rstrip("\n").encode() + b"\n")
        self.store.move(key, f"rejected/{request_id}.json")

    def complete(self, batch_id: str, request_ids: list[str]) -> None:
        """Move claimed requests to done/; a request already done in this batch is skipped."""
        for request_id in request_ids:
            key = self._claimed_key(batch_id, request_id)
            done = f"done/{batch_id}/{request_id}.json"
            if not self.store.move(key, done) and self.store.size(done) is None:
                raise RequestNotClaimedError(
                    f"request {request_id} is neither claimed nor done in batch {batch_id} "
                    f"(it is {self.status(request_id)})"
                )

    def status(self, request_id: str) -> Location | None:
        """Where `request_id` is now; None if the inbox has never seen it."""
        check_id(request_id)
        if self.store.size(f"claims/{request_id}") is not None:
            batch_id = self.store.get(f"claims/{request_id}").decode()
            if self.store.size(f"done/{batch_id}/{request_id}.json") is not None:
                return Location(DONE, batch_id)
            if self.store.size(f"rejected/{request_id}.json") is not None:
                return Location(REJECTED, batch_id)
            return Location(CLAIMED, batch_id)
        for state, key in (
            (PENDING, f"pending/{request_id}.json"),
            (REJECTED, f"rejected/{request_id}.json"),
            (RESERVED, f"ids/{request_id}"),
        ):
            if self.store.size(key) is not None:
                return Location(state)
        return None

    def rejection_reason(self, request_id: str) -> str | None:
        """Why a rejected request was rejected; None if it was not."""
        key = f"rejected/{check_id(request_id)}.reason.txt"
        return self.store.get(key).decode().rstrip("\n") if self.store.size(key) is not None else None


def open_inbox(uri: str = DEFAULT_INBOX, max_bytes: int = MAX_REQUEST_BYTES, endpoint_url: str | None = None) -> Inbox:
    """The inbox at a local folder (a path or file://) or an S3 prefix (s3://bucket/prefix/)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise InboxError(f"{uri!r} names no bucket: use s3://bucket/prefix/")
        return Inbox(S3Store(bucket, prefix, endpoint_url), max_bytes)
    if "://" in uri and not uri.startswith("file://"):
        raise InboxError(f"unsupported inbox location {uri!r}: use a folder path or s3://bucket/prefix/")
    return Inbox(LocalStore(uri.removeprefix("file://")), max_bytes)


def read_sample_ids(file: str | Path) -> list[str]:
    """Sample ids from a file: a JSON list, or one id per line (blank lines and # comments skipped)."""
    path = Path(file)
    if not path.is_file():
        raise InvalidRequestError(f"sample id file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InvalidRequestError(f"{path} must hold a JSON list of sample id strings")
        return ids
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def submit_request(
    inbox_uri: str = DEFAULT_INBOX,
    sample_ids: list[str] | None = None,
    file: str | Path | None = None,
    request_id: str | None = None,
    subject: str | None = None,
    reason: str | None = None,
    endpoint_url: str | None = None,
) -> DeletionRequest:
    """Build a request from ids given inline or in a file and submit it (`unlearn request submit`)."""
    if (sample_ids is None) == (file is None):
        raise InvalidRequestError("give the sample ids either inline (--ids) or in a file (--file), not both")
    ids = list(sample_ids) if sample_ids is not None else read_sample_ids(file)
    request = make_request(request_id=request_id or new_request_id(), sample_ids=ids, subject=subject, reason=reason)
    open_inbox(inbox_uri, endpoint_url=endpoint_url).submit(request)
    return request
