"""Deletion requests and the inbox they wait in: a local folder or an S3 prefix, one interface.

An inbox entry moves through the inbox's folders, and only ever moves (nothing is deleted):

    pending/<request_id>.json
      -> claimed/<batch_id>/<request_id>.json        claim: every claimable request, as one batch
           -> done/<batch_id>/<request_id>.json      complete
           -> rejected/<request_id>.json             reject: bad content or kind, or the operator
           -> pending/<request_id>.json              release, by the operator: the next batch claims it
      -> rejected/<request_id>.json                  sweep: not a regular file; or the operator
    pending/<anything else>
      -> quarantine/<stamp>-<random>                 sweep: misnamed, or reusing a used request id

Beside each rejected entry lies `rejected/<request_id>.reason.txt`, beside each quarantined
one `quarantine/<stamp>-<random>.reason.txt` (its original name and the reason). Only
regular files named `<valid request id>.json` whose id is unused are ever claimed; `claim`
leaves everything else, silently, for `sweep`, which the batch runs first.

Bookkeeping objects beside them make the moves safe without a server:
`ids/<request_id>` reserves a request id for ever (created exclusively by `submit`, and by
`claim` and `sweep` for entries put into pending/ by hand), `batches/<batch_id>` reserves a
batch id for ever, and `claims/<request_id>` (created exclusively, holding the batch id) is
what claims a request. The file move that follows is only housekeeping: anyone who finds a
pending file with a claim marker, and no claimed/done/rejected record of that id yet,
finishes the move into the marker's batch, so a claimer that crashes between the two steps
loses nothing. A pending entry whose id already has such a record (or a rejected record) is
a reuse of the name, never that request: request ids are used once, for ever, so `sweep`
quarantines it and the first request's records stay as they were.

Guarantees. Exclusive creation is `os.link` of a complete temporary file on a local folder
and a conditional put (`If-None-Match: *`) on S3, so on both backends every request is
claimed by at most one batch, even by claimers racing on different machines; a batch id
and a request id are each used once. A local folder also serialises whole claims, sweeps,
completions, rejections and releases with an `fcntl` lock, so concurrent claimers there
each take a consistent snapshot; on S3 two concurrent claimers may split the pending
requests between them (each request still lands in exactly one batch), and a sweep racing
a claim may quarantine a copy of a request that the claim moved. moto's server checks the
condition and writes in two steps, so only real S3 (or another store with atomic
conditional writes) gives the S3 guarantee.

Records are never overwritten: a move whose target exists fails (`renameat2` with
`RENAME_NOREPLACE` on a folder, else a check under the lock; a conditional put on S3, or a
check first for an object over 8 MiB), and the entry stays, or is quarantined when it is a
second copy of a finished request. Links are never followed and only regular files are
ever opened: every check is an `lstat`, a read opens with `O_NOFOLLOW | O_NONBLOCK`,
`fstat`s the descriptor and reads at most the size limit, and a move renames the entry
itself; so a link (to /dev/zero, /etc/passwd, a valid request elsewhere), a FIFO, a device
or a folder in the inbox can neither hang, exhaust nor block a batch. On S3 a "folder" is a
prefix (`pending/x.json/...`, seen through CommonPrefixes) and is moved object by object.
Names starting `.tmp-` are a local write in progress and are left alone. Every reason
stored or returned is at most 300 bytes (cut with a marker), and `parse` takes time linear
in the file's size, whatever it holds: the size and nesting-depth bounds see to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from unlearn.errors import UnlearnError, preview

log = logging.getLogger(__name__)

DEFAULT_INBOX = "data/requests"
MAX_REQUEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 16  # a request needs 2 (an object holding a list)
MAX_SAMPLE_ID_CHARS = 256
MAX_REASON_BYTES = 300
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
PENDING, CLAIMED, DONE, REJECTED, RESERVED = "pending", "claimed", "done", "rejected", "reserved"
QUARANTINE = "quarantine"
FILE, FOLDER = "file", "folder"  # entry kinds; a local folder also has symlink, FIFO, device, socket
TEMP_PREFIX = ".tmp-"


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


class NotARegularFileError(InboxError, OSError):
    """An inbox entry that is not a regular file (symlink, FIFO, folder, device): never opened."""


class EntryExistsError(InboxError, FileExistsError):
    """A move whose target exists: records are never overwritten."""


class UnknownRequestError(InboxError, LookupError):
    """A request id the inbox has no request file for."""


class UnknownBatchError(InboxError, LookupError):
    """A batch id the inbox has never claimed."""


class RequestFinalError(InboxError, ValueError):
    """A request already done or rejected: its state cannot change any more."""


def short(text: str, limit: int = MAX_REASON_BYTES) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, with a marker saying how long it was."""
    data = str(text).encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = f" ... [cut: {len(data)} bytes in all]"
    return data[: max(limit - len(marker), 0)].decode("utf-8", "ignore") + marker


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: safe to print whatever the value holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_id(value: str, what: str = "request id") -> str:
    """`value` if it is a safe id (1-128 of A-Z a-z 0-9 . _ -, not starting with '.'), else raise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value.startswith("."):
        raise InvalidRequestError(
            f"{what} {shown(value)} is not valid: use 1 to 128 characters of A-Z a-z 0-9 . _ -, not starting with '.'"
        )
    return value


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.fullmatch(value)) and not value.startswith(".")


def request_id_of(name: str) -> str | None:
    """The request id of an inbox file name `<request id>.json`; None for any other name."""
    request_id = name.removesuffix(".json")
    return request_id if name.endswith(".json") and is_valid_id(request_id) else None


def _valid_request_id(value: str) -> str:
    try:
        return check_id(value)
    except InvalidRequestError as error:
        raise ValueError(str(error)) from None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _positions(indices: list[int]) -> str:
    more = f" and {len(indices) - 10} more" if len(indices) > 10 else ""
    return f"{indices[:10]}{more}"


def _valid_sample_ids(values: list[str]) -> list[str]:
    long = [i for i, v in enumerate(values) if len(v) > MAX_SAMPLE_ID_CHARS]
    if long:
        raise ValueError(f"sample ids at positions {_positions(long)} are longer than {MAX_SAMPLE_ID_CHARS} characters")
    unencodable = [i for i, v in enumerate(values) if not _encodable(v)]
    if unencodable:
        raise ValueError(f"sample ids at positions {_positions(unencodable)} are not valid Unicode")
    blank = [i for i, v in enumerate(values) if not v.strip()]
    if blank:
        raise ValueError(f"sample ids at positions {_positions(blank)} are empty")
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise ValueError(f"sample ids named more than once: {preview(repeated)}")
    return values


def _valid_text(value: str | None) -> str | None:
    if value is not None and not _encodable(value):
        raise ValueError("is not valid Unicode (it holds a lone surrogate)")
    return value


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DeletionRequest(BaseModel):
    """A right-to-be-forgotten request: the training samples one data subject wants deleted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, AfterValidator(_valid_request_id)]
    sample_ids: Annotated[list[str], Field(min_length=1), AfterValidator(_valid_sample_ids)]
    received_at: Annotated[AwareDatetime, AfterValidator(lambda t: t.astimezone(UTC))] = Field(default_factory=_utc_now)
    subject: Annotated[str | None, AfterValidator(_valid_text)] = None
    reason: Annotated[str | None, AfterValidator(_valid_text)] = None

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def _problems(error: ValidationError) -> str:
    """The first few schema errors, each as `field: message` (a field name cut to 80 characters)."""
    problems = error.errors()
    text = "; ".join(f"{'.'.join(map(str, e['loc']))[:80] or 'request'}: {e['msg']}" for e in problems[:5])
    return text + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


def make_request(**fields) -> DeletionRequest:
    """A validated request; schema errors raise `InvalidRequestError` naming each field."""
    try:
        return DeletionRequest.model_validate(fields)
    except ValidationError as error:
        raise InvalidRequestError(f"invalid deletion request: {_problems(error)}") from None


# Strings (to the closing quote, or to the end when there is none) and, between them, brackets.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)  # possessive: never backtracks
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text `raw`, brackets inside strings
    not counted; linear in `len(raw)` (regular expressions without backtracking, C loops)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse(raw: bytes, expected_id: str | None = None, max_bytes: int = MAX_REQUEST_BYTES) -> DeletionRequest | str:
    """The request in `raw` JSON, or the reason (at most 300 bytes) it is not one.

    Never raises, whatever `raw` holds. Its time is bounded, linear in `len(raw)`: content
    over `max_bytes` is refused unparsed, and so is JSON nested deeper than
    `MAX_JSON_DEPTH`, found by a linear pre-scan before `json.loads` (whose recursion the
    bound keeps shallow); the schema's checks are linear in what is left.
    """
    try:
        return _parse(raw, expected_id, max_bytes)
    except Exception as error:  # noqa: BLE001 - bad content is a reason, never an exception
        return short(f"could not be parsed: {type(error).__name__}: {error}")


def _parse(raw: bytes, expected_id: str | None, max_bytes: int) -> DeletionRequest | str:
    raw = bytes(raw)
    if len(raw) > max_bytes:
        return f"request is {len(raw)} bytes, over the inbox limit of {max_bytes}; it was not parsed"
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        return f"JSON nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}; it was not parsed"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError, and ints over 4300 digits
        return short(f"not valid UTF-8 JSON: {error}")
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    try:
        request = DeletionRequest.model_validate(data)
    except ValidationError as error:
        return short(f"schema: {_problems(error)}")
    if expected_id is not None and request.request_id != expected_id:
        return short(f"request_id {shown(request.request_id)} does not match its file name {shown(expected_id)}.json")
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


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return FOLDER
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _not_regular(key: str, kind: str) -> NotARegularFileError:
    return NotARegularFileError(f"{key} is a {kind}, not a regular file; it was not read")


_RENAME_NOREPLACE, _AT_FDCWD = 1, -100


def _load_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename the entry `source` itself (never what a link points to) to `target`, which must not exist.

    `renameat2(RENAME_NOREPLACE)` makes the check atomic; where the system or file system
    lacks it, the check comes first (the inbox lock serialises the inbox's own moves).
    FileExistsError if `target` exists, FileNotFoundError if `source` does not.
    """
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


_LOCKS_HELD = threading.local()  # per thread: {real path of an inbox folder: how deep its lock is held}


class _Store:
    """What both stores derive from `stat(key) -> (kind, size) | None`."""

    def stat(self, key: str) -> tuple[str, int] | None:
        raise NotImplementedError

    def kind(self, key: str) -> str | None:
        found = self.stat(key)
        return found[0] if found else None

    def size(self, key: str) -> int | None:
        found = self.stat(key)
        return found[1] if found else None


class LocalStore(_Store):
    """Keys as files under a root folder; links are never followed, only regular files opened."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _temp(self, folder: Path, data: bytes) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        with open(temp, "xb") as handle:
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
        """Write `key` whole, replacing a file (or a link itself) there; never a folder."""
        path = self._path(key)
        os.replace(self._temp(path.parent, data), path)

    def stat(self, key: str) -> tuple[str, int] | None:
        """(kind, size) of the entry `key` itself (`lstat`: a link is a "symlink"); None if absent."""
        try:
            info = os.lstat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _kind(info.st_mode), info.st_size

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The bytes of the regular file `key`, at most `limit` + 1 of them.

        Anything else (a symlink, FIFO, folder, device) raises `NotARegularFileError`
        unopened; the open itself neither follows a link nor waits (O_NOFOLLOW | O_NONBLOCK),
        so an entry swapped after the check is refused by `fstat`, not read.
        """
        path = self._path(key)
        kind = _kind(os.lstat(path).st_mode)  # FileNotFoundError if absent
        if kind != FILE:
            raise _not_regular(key, kind)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _not_regular(key, "symlink") from None
            raise
        try:
            kind = _kind(os.fstat(descriptor).st_mode)
            if kind != FILE:
                raise _not_regular(key, kind)
            chunks, left = [], None if limit is None else limit + 1
            while left is None or left > 0:
                chunk = os.read(descriptor, 1 << 16 if left is None else min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                if left is not None:
                    left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(descriptor)

    def move(self, source: str, target: str, kind: str | None = None) -> bool:
        """Rename the entry `source` itself (whatever its `kind`) to `target`; False if `source` is gone.

        Never overwrites: `EntryExistsError` if `target` exists (and `source` stays).
        """
        self._path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            rename_noreplace(self._path(source), self._path(target))
        except FileNotFoundError:
            return False
        except FileExistsError:
            raise EntryExistsError(f"{self.uri}/{target} exists: {source} was not moved onto it") from None
        with contextlib.suppress(OSError):  # an emptied batch folder is clutter, not state
            self._path(source).parent.rmdir()
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self, folder: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry directly inside `folder`, sorted; writes in progress left out.

        A `folder` that is itself a symlink (or not a folder) lists as empty: never followed.
        """
        path = self._path(folder)
        if self.kind(folder) != FOLDER:
            return []
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in sorted(names):
            if name.startswith(TEMP_PREFIX):
                continue
            kind = self.kind(f"{folder}/{name}")
            if kind is not None:
                found.append((name, kind))
        return found

    def children(self, folder: str) -> list[str]:
        """Names directly inside `folder` (files and folders), hidden ones left out."""
        return [name for name, _ in self.entries(folder) if not name.startswith(".")]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise the inbox's changes on this folder; re-entrant within a thread.

        The kernel drops the lock if its holder dies. The lock file is opened without
        following a link or waiting, and must be a regular file. A thread that holds the
        folder's lock (through any store on it) takes it again at once.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        folder = os.path.realpath(self.root)
        held = _LOCKS_HELD.__dict__.setdefault("depth", {})
        if held.get(folder):
            held[folder] += 1
            try:
                yield
            finally:
                held[folder] -= 1
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            descriptor = os.open(self.root / ".claim.lock", flags, 0o644)
        except OSError as error:
            raise InboxError(f"cannot open the inbox lock {self.root / '.claim.lock'}: {error}") from error
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise InboxError(f"the inbox lock {self.root / '.claim.lock'} is not a regular file")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            held[folder] = 1
            try:
                yield
            finally:
                del held[folder]
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)


SMALL_OBJECT_BYTES = 8 << 20  # moved by a conditional put (atomic no-overwrite); larger: checked copy


class S3Store(_Store):
    """Keys as objects under `s3://bucket/prefix/`; a "folder" is a prefix holding objects."""

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
            if code in {
                "NoSuchKey",
                "404",
                "NotFound",
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "InvalidRange",
            }:
                raise
            raise InboxError(f"S3 {method} on {self.uri} failed: {short(str(error))}") from error
        except BotoCoreError as error:
            raise InboxError(f"S3 {method} on {self.uri} failed: {short(str(error))}") from error

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

    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes (at most `limit` + 1 of them); FileNotFoundError if there is none."""
        from botocore.exceptions import ClientError

        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}
        try:
            body = self._call("get_object", Key=self._key(key), **ranged)["Body"]
            return body.read() if limit is None else body.read(limit + 1)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object
                return b""
            raise FileNotFoundError(f"{self.uri}/{key}") from None

    def _head(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self._call("head_object", Key=self._key(key))["ContentLength"]
        except ClientError:
            return None

    def _objects_under(self, key: str, limit: int | None = None) -> list[str]:
        """Keys (relative to the store) of the objects under the prefix `key/`."""
        start = self._key(key) + "/"
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start, PaginationConfig={"MaxItems": limit} if limit else {}
        )
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                found.extend(f"{key}/{o['Key'][len(start) :]}" for o in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise InboxError(f"cannot list {self.uri}/{key}/: {short(str(error))}") from error
        return found[:limit] if limit else found

    def stat(self, key: str) -> tuple[str, int] | None:
        """("file", size) for an object, ("folder", 0) for a prefix with objects, else None."""
        size = self._head(key)
        if size is not None:
            return FILE, size
        return (FOLDER, 0) if self._objects_under(key, limit=1) else None

    def _move_object(self, source: str, target: str) -> bool:
        from botocore.exceptions import ClientError

        size = self._head(source)
        if size is None:
            return False
        if size <= SMALL_OBJECT_BYTES:
            try:
                body = self.get(source)
            except FileNotFoundError:
                return False
            if not self.create(target, body):
                raise EntryExistsError(f"{self.uri}/{target} exists: {source} was not moved onto it")
        else:
            if self.stat(target) is not None:
                raise EntryExistsError(f"{self.uri}/{target} exists: {source} was not moved onto it")
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

    def move(self, source: str, target: str, kind: str | None = None) -> bool:
        """Move the object `source`, or else every object under the prefix `source/`, to `target`.

        `kind` "file" moves only the object, "folder" only the prefix (a name may be both).
        S3 has no rename: each object is copied then deleted; a conditional put (objects up
        to 8 MiB) or a check first never overwrites: `EntryExistsError` if `target` exists.
        False if `source` is gone.
        """
        if kind != FOLDER and (kind == FILE or self._head(source) is not None):
            return self._move_object(source, target)
        keys = self._objects_under(source)
        if not keys:
            return False
        if self.stat(target) is not None:
            raise EntryExistsError(f"{self.uri}/{target} exists: {source}/ was not moved onto it")
        for key in keys:
            self._move_object(key, target + key[len(source) :])
        return True

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))

    def entries(self, folder: str) -> list[tuple[str, str]]:
        """(name, kind) directly inside `folder`: objects are files, prefixes folders (a name may be both)."""
        start = self._key(folder) + "/"
        found: set[tuple[str, str]] = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start, Delimiter="/")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                found.update((p["Prefix"][len(start) :].rstrip("/"), FOLDER) for p in page.get("CommonPrefixes", []))
                found.update((o["Key"][len(start) :], FILE) for o in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise InboxError(f"cannot list {self.uri}/{folder}: {short(str(error))}") from error
        return sorted(entry for entry in found if entry[0])

    def children(self, folder: str) -> list[str]:
        return sorted({name for name, _ in self.entries(folder) if not name.startswith(".")})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield  # per-request claim markers are the exclusion on S3


# --- the inbox ----------------------------------------------------------------------------------

_UNREADABLE = ""  # a claim marker that is not a batch id (not a regular file, or bad content)


class Inbox:
    """Deletion requests waiting, claimed in batches, done or rejected (see the module docstring)."""

    def __init__(self, store: LocalStore | S3Store, max_bytes: int = MAX_REQUEST_BYTES):
        self.store, self.max_bytes = store, max_bytes

    @property
    def uri(self) -> str:
        return self.store.uri

    # --- small helpers --------------------------------------------------------------------

    def _exists(self, key: str) -> bool:
        return self.store.stat(key) is not None

    def _claim_of(self, request_id: str) -> str | None:
        """The batch id in `claims/<request_id>`; None if unclaimed, "" if the marker is unreadable."""
        try:
            batch_id = self.store.get(f"claims/{request_id}", limit=256).decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        except NotARegularFileError:
            return _UNREADABLE
        return batch_id if is_valid_id(batch_id) else _UNREADABLE

    def _record_of(self, request_id: str, batch_id: str | None) -> str | None:
        """How a request id was already used, given its claim: "done in batch b", ...; None if not."""
        if batch_id == _UNREADABLE:
            return "claimed, by an unreadable claim marker"
        if batch_id is not None:
            if self._exists(f"done/{batch_id}/{request_id}.json"):
                return f"done in batch {batch_id}"
            if self._exists(f"claimed/{batch_id}/{request_id}.json"):
                return f"claimed by batch {batch_id}"
        if self._exists(f"rejected/{request_id}.json"):
            return f"rejected in batch {batch_id}" if batch_id else "rejected"
        return None

    def _reserve(self, request_id: str) -> None:
        self.store.create(f"ids/{request_id}", b"")  # False: reserved already, as it should be

    def _write_reason(self, key: str, text: str) -> None:
        self.store.put(key, text.rstrip("\n").encode("utf-8", "backslashreplace") + b"\n")

    def _quarantine(self, key: str, kind: str | None, reason: str) -> str | None:
        """Move the entry `key` itself to quarantine/<stamp>-<random>, a note of its name and
        the reason beside it; the reason, or None if the entry was gone."""
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
        reason, note = short(reason), f"{QUARANTINE}/{name}.reason.txt"
        self._write_reason(note, f"original name: {key!r}\nreason: {reason}")
        if not self.store.move(key, f"{QUARANTINE}/{name}", kind):
            self.store.delete(note)  # our own note of a move that did not happen
            return None
        log.warning("%s/%s quarantined as %s/%s: %s", self.uri, shown(key), QUARANTINE, name, reason)
        return reason

    def _reject_entry(self, key: str, kind: str | None, request_id: str, reason: str) -> str | None:
        """Move the entry `key` itself to rejected/<request_id>.json, the reason written first;
        the reason, or None if the entry was gone."""
        reason = short(reason)
        # The reason first: a crash between the two leaves the entry where it was, to be rejected again.
        self._write_reason(f"rejected/{request_id}.reason.txt", reason)
        if not self.store.move(key, f"rejected/{request_id}.json", kind):
            return None
        self._reserve(request_id)
        return reason

    # --- submitting and claiming ----------------------------------------------------------

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
        """Ids of the requests waiting to be claimed, sorted: regular files named `<id>.json`
        whose id is unclaimed and unused. Anything else in pending/ is `sweep`'s (no warning here)."""
        ids = []
        for name, kind in self.store.entries(PENDING):
            request_id = request_id_of(name)
            if kind != FILE or request_id is None or self._claim_of(request_id) is not None:
                continue
            if not self._exists(f"rejected/{request_id}.json"):
                ids.append(request_id)
        return ids

    def sweep(self) -> dict[str, str]:
        """Deal with every bad entry of pending/; {label: reason} for each one dealt with.

        The label is the request id for a name `<valid id>.json`, else `pending/<repr of the
        name, cut>`. An entry reusing a request id that was already used (claimed, done or
        rejected), and a misnamed one, is quarantined: moved, whole and unread, to
        quarantine/ beside a note of its name and the reason. An entry under a valid, unused
        request name that is not a regular file (symlink, FIFO, folder, device; an S3 prefix)
        is rejected by id: moved itself to rejected/<id>.json, the reason beside it, the id
        reserved. Regular files under valid, unused names are left for `claim`.
        """
        dealt: dict[str, str] = {}
        with self.store.lock():
            listed = self.store.entries(PENDING)
            files = {name for name, kind in listed if kind == FILE}
            for name, kind in listed:
                if name.startswith(TEMP_PREFIX):
                    continue
                both = kind == FOLDER and name in files  # S3 only: a prefix beside an object of that name
                label = request_id_of(name) if not both else None
                label = label or f"{PENDING}/{shown(name + '/' if both else name)}"
                reason = self._sweep_entry(name, kind, both)
                if reason is not None:
                    dealt[label] = reason
        return dealt

    def _sweep_entry(self, name: str, kind: str, beside_file: bool) -> str | None:
        """Quarantine or reject one bad entry of pending/; the reason, None if it is fine (or gone)."""
        key, request_id = f"{PENDING}/{name}", request_id_of(name)
        if request_id is None:
            what = "folder" if kind == FOLDER else "file" if kind == FILE else kind
            return self._quarantine(
                key,
                kind,
                f"misnamed: {what} pending/{shown(name)} is not <request id>.json "
                "(1-128 of A-Z a-z 0-9 . _ -); submit it with `unlearn request submit`",
            )
        used = self._record_of(request_id, self._claim_of(request_id))
        if used is not None:
            return self._quarantine(
                key, kind, f"duplicate: request id {request_id!r} was already used ({used}); submit under a new id"
            )
        if beside_file:
            return self._quarantine(
                key, kind, f"a folder (prefix) beside request {request_id}'s file, which stays pending"
            )
        if kind == FILE:
            return None
        reason = self._reject_entry(
            key,
            kind,
            request_id,
            f"pending/{request_id}.json is a {kind}, not a regular file; it was not read "
            "(submit requests with `unlearn request submit`)",
        )
        if reason is not None:
            log.warning("%s/%s rejected: %s", self.uri, key, reason)
        return reason

    def claim(self, batch_id: str) -> list[str]:
        """Claim every pending request into batch `batch_id`; the ids this batch got.

        Only regular files with valid, unused ids are claimed; anything else is left for `sweep`.
        """
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
                self._reserve(request_id)  # a file put into pending/ by hand reserves its id too
                with contextlib.suppress(EntryExistsError):  # cannot happen: the batch is new
                    self.store.move(f"pending/{request_id}.json", f"claimed/{batch_id}/{request_id}.json", FILE)
            self._settle()  # requests other claimers won while we listed them
        return claimed

    def _settle(self) -> None:
        """Finish the move of requests whose claim marker exists but which are still in pending/.

        Only a regular file, and only while no claimed/done/rejected record of its id exists:
        a file under a used id is a reuse of the name, left for `sweep` to quarantine.
        """
        for name, kind in self.store.entries(PENDING):
            request_id = request_id_of(name)
            if kind != FILE or request_id is None:
                continue
            batch_id = self._claim_of(request_id)
            if not batch_id or self._record_of(request_id, batch_id) is not None:
                continue
            with contextlib.suppress(EntryExistsError):
                self.store.move(f"pending/{name}", f"claimed/{batch_id}/{name}", FILE)

    def claimed_batches(self) -> list[str]:
        """Batches with requests claimed but neither done nor rejected: a crashed run's to resume."""
        with self.store.lock():
            self._settle()
        batches = [name for name, kind in self.store.entries(CLAIMED) if kind == FOLDER and is_valid_id(name)]
        return [b for b in batches if self.claimed_requests(b)]

    def claimed_requests(self, batch_id: str) -> list[str]:
        """Ids of the requests still claimed by `batch_id` (entries named `<valid id>.json`)."""
        names = self.store.children(f"claimed/{check_id(batch_id, 'batch id')}")
        return [request_id for request_id in map(request_id_of, names) if request_id is not None]

    def _claimed_key(self, batch_id: str, request_id: str) -> str:
        return f"claimed/{check_id(batch_id, 'batch id')}/{check_id(request_id)}.json"

    # --- reading, rejecting, completing ---------------------------------------------------

    def read_raw(self, batch_id: str, request_id: str) -> bytes:
        """The bytes of a claimed request: a regular file, read up to the size limit.

        A file over the limit is refused unread (`RequestTooLargeError`), and anything
        that is not a regular file unopened (`NotARegularFileError`).
        """
        key = self._claimed_key(batch_id, request_id)
        found = self.store.stat(key)
        if found is None:
            raise RequestNotClaimedError(f"request {request_id} is not claimed by batch {batch_id}")
        kind, size = found
        if kind != FILE:
            raise _not_regular(key, kind)
        if size > self.max_bytes:
            raise RequestTooLargeError(
                f"request file is {size} bytes, over the inbox limit of {self.max_bytes}; it was not read"
            )
        try:
            raw = self.store.get(key, limit=self.max_bytes)
        except FileNotFoundError:
            raise RequestNotClaimedError(f"request {request_id} is not claimed by batch {batch_id}") from None
        if len(raw) > self.max_bytes:
            raise RequestTooLargeError(
                f"request file is over the inbox limit of {self.max_bytes} bytes; it was not read past it"
            )
        return raw

    def read(self, batch_id: str, request_id: str) -> DeletionRequest | str:
        """A claimed request, or the reason (at most 300 bytes) it cannot be one: too large,
        not a regular file, unreadable, malformed, schema. Raises only for a request that is
        not claimed by the batch (or bad ids)."""
        try:
            raw = self.read_raw(batch_id, request_id)
        except (RequestTooLargeError, NotARegularFileError) as error:
            return short(str(error))
        except PermissionError as error:
            return short(f"claimed/{batch_id}/{request_id}.json cannot be read: {error.strerror}")
        return parse(raw, expected_id=request_id, max_bytes=self.max_bytes)

    def reject(self, batch_id: str, request_id: str, reason: str) -> None:
        """Move a claimed request (the entry itself, whatever it is) to rejected/, its reason
        (cut to 300 bytes) beside it; a repeat is a no-op. A rejected record is never
        overwritten: a claimed copy of an id rejected already is quarantined instead."""
        key = self._claimed_key(batch_id, request_id)
        with self.store.lock():
            kind = self.store.kind(key)
            if kind is None:
                if self.status(request_id) == Location(REJECTED, batch_id):
                    return
                raise RequestNotClaimedError(f"request {request_id} is not claimed by batch {batch_id}")
            if self._exists(f"rejected/{request_id}.json"):
                self._quarantine(key, kind, f"duplicate: request id {request_id!r} was already rejected")
                return
            self._reject_entry(key, kind, request_id, reason)

    def complete(self, batch_id: str, request_ids: list[str]) -> None:
        """Move claimed requests to done/; a request already done in this batch is skipped.

        A done record is never overwritten: a claimed copy of a request done already is quarantined.
        """
        with self.store.lock():
            for request_id in request_ids:
                key = self._claimed_key(batch_id, request_id)
                done = f"done/{batch_id}/{request_id}.json"
                kind = self.store.kind(key)
                if kind is not None and self._exists(done):
                    self._quarantine(key, kind, f"duplicate: request {request_id!r} is done in batch {batch_id}")
                elif (kind is None or not self.store.move(key, done, kind)) and not self._exists(done):
                    raise RequestNotClaimedError(
                        f"request {request_id} is neither claimed nor done in batch {batch_id} "
                        f"(it is {self.status(request_id)})"
                    )

    # --- the operator's commands ----------------------------------------------------------

    def _known_batch(self, batch_id: str) -> None:
        check_id(batch_id, "batch id")
        if not self._exists(f"batches/{batch_id}") and not self.claimed_requests(batch_id):
            raise UnknownBatchError(f"no batch {batch_id!r} in {self.uri}")

    def reject_request(self, request_id: str, reason: str) -> Location:
        """Reject a pending or claimed request, by the operator; where it is now.

        The reason is stored as "rejected by operator: <reason>". A request done or
        rejected already raises `RequestFinalError`, an unknown one `UnknownRequestError`.
        """
        check_id(request_id)
        reason = f"rejected by operator: {reason}"
        with self.store.lock():
            self._settle()
            where = self.status(request_id)
            if where is None or where.state == RESERVED:
                raise UnknownRequestError(f"no request {request_id!r} waiting or claimed in {self.uri}")
            if where.state in {DONE, REJECTED}:
                batch = f" in batch {where.batch_id}" if where.batch_id else ""
                raise RequestFinalError(f"request {request_id} is already {where.state}{batch}: it cannot be rejected")
            if where.state == CLAIMED:
                if where.batch_id is None:
                    raise InboxError(f"request {request_id}'s claim marker is unreadable: see {self.uri}/claims/")
                self.reject(where.batch_id, request_id, reason)
                return Location(REJECTED, where.batch_id)
            key = f"{PENDING}/{request_id}.json"
            self._reject_entry(key, self.store.kind(key), request_id, reason)
            return Location(REJECTED)

    def reject_batch(self, batch_id: str, reason: str) -> list[str]:
        """Reject every request still claimed by `batch_id`, by the operator; their ids."""
        with self.store.lock():
            self._settle()
            self._known_batch(batch_id)
            request_ids = self.claimed_requests(batch_id)
            for request_id in request_ids:
                self.reject(batch_id, request_id, f"rejected by operator: {reason}")
        return request_ids

    def release(self, batch_id: str) -> list[str]:
        """Put every request still claimed by `batch_id` back in pending/ (its claim marker
        removed), for the next batch to claim; their ids.

        A request that a crash left half released (in pending/, its marker still naming
        this batch) is released too; one whose name is taken in pending/ stays claimed.
        """
        released = []
        with self.store.lock():
            self._known_batch(batch_id)
            for name, kind in self.store.entries(PENDING):
                request_id = request_id_of(name)
                if (
                    kind == FILE
                    and request_id
                    and self._claim_of(request_id) == batch_id
                    and self._record_of(request_id, batch_id) is None
                ):
                    self.store.delete(f"claims/{request_id}")
                    released.append(request_id)
            for request_id in self.claimed_requests(batch_id):
                key = self._claimed_key(batch_id, request_id)
                try:
                    moved = self.store.move(key, f"{PENDING}/{request_id}.json", self.store.kind(key))
                except EntryExistsError:
                    log.warning("%s: pending/%s.json exists, so %s stays claimed", self.uri, request_id, key)
                    continue
                if moved:
                    self.store.delete(f"claims/{request_id}")
                    released.append(request_id)
        return sorted(released)

    # --- where a request is ---------------------------------------------------------------

    def status(self, request_id: str) -> Location | None:
        """Where `request_id` is now; None if the inbox has never seen it."""
        check_id(request_id)
        batch_id = self._claim_of(request_id)
        if batch_id is not None:
            batch_id = batch_id or None  # an unreadable marker: claimed, by no batch we can name
            if batch_id and self._exists(f"done/{batch_id}/{request_id}.json"):
                return Location(DONE, batch_id)
            if self._exists(f"rejected/{request_id}.json"):
                return Location(REJECTED, batch_id)
            return Location(CLAIMED, batch_id)
        for state, key in (
            (PENDING, f"pending/{request_id}.json"),
            (REJECTED, f"rejected/{request_id}.json"),
            (RESERVED, f"ids/{request_id}"),
        ):
            if self._exists(key):
                return Location(state)
        return None

    def request_ids(self) -> list[str]:
        """Every request id this inbox has accepted or reserved, sorted (each keeps a marker in `ids/` for ever)."""
        return sorted(name for name, kind in self.store.entries("ids") if kind == FILE and is_valid_id(name))

    def rejection_reason(self, request_id: str) -> str | None:
        """Why a rejected request was rejected (at most 300 bytes); None if it was not."""
        key = f"rejected/{check_id(request_id)}.reason.txt"
        try:
            text = self.store.get(key, limit=4 * MAX_REASON_BYTES)
        except (FileNotFoundError, NotARegularFileError):
            return None
        return short(text.decode("utf-8", "replace").rstrip("\n"))


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
