"""Output storage: where tile PNGs, cell tables and ``tasks.json`` are kept, on local disk or in S3.

Both adapters store bytes by *key*, a ``/``-separated relative path such as ``slides/<slide>/cells.npz``
or ``hali/<slide>/<tile>.png`` (the keys come from :mod:`preprocess.layout`, the same for both):

- :class:`LocalStorage` keeps key ``k`` at ``<root>/k``; when ``root`` is Label Studio's
  ``LOCAL_FILES_DOCUMENT_ROOT``, a task shows it as ``/data/local-files/?d=k``.
- :class:`S3Storage` keeps key ``k`` at ``s3://<bucket>/<prefix>/k`` and a task shows it as that
  ``s3://`` URI, which Label Studio resolves through the project's S3 import storage.

Writes are whole objects and idempotent by key (local: a temporary file, then ``os.replace``; S3:
``put_object`` is atomic), so a run that stops half way loses nothing it wrote and a re-run skips
what exists. Every boto3 failure becomes a :class:`~adapters.errors.StorageError` naming the setting to
fix (credentials, bucket, endpoint). :func:`open_output_storage` builds the storages from settings at an
entry point; the adapters themselves take their client.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from adapters.errors import StorageError, StorageKeyError

log = logging.getLogger(__name__)

LOCAL_FILES_URL = "/data/local-files/?d="
_CREDENTIALS_FIX = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to keys that may use the bucket"
_DENIED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                 "403", "Forbidden"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


class Storage(Protocol):
    """Bytes by key (``/``-separated, relative, no leading ``/``)."""

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`~adapters.errors.StorageError` when it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str) -> set[str]:
        """Every key that starts with ``prefix`` (one listing, not one request per key)."""
        ...

    def version(self, key: str) -> str | None:
        """A token that changes whenever the object is rewritten (mtime, ETag); None when it is missing."""
        ...

    def location(self, key: str) -> str:
        """Where the object lives, for messages: a file path or an ``s3://`` URI."""
        ...

    def task_uri(self, key: str) -> str:
        """The URI a Label Studio task carries in ``data.image`` for this object."""
        ...


class LocalStorage:
    """Objects as files under ``root`` (an absolute directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self.path(key)
        with self._io(key, "write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)  # readers see the old file or the new one, never half of one
            finally:
                Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        path = self.path(key)
        if not path.is_file():
            raise StorageError(f"{path} does not exist; run `hali preprocess` for this slide with the same "
                               "HALI_DATA_DIR / HALI_LS_FILES_ROOT")
        with self._io(key, "read"):
            return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self, prefix: str) -> set[str]:
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return set()
        found = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return {k for k in found if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith(".")}

    def version(self, key: str) -> str | None:
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_mtime_ns}:{st.st_size}"

    def location(self, key: str) -> str:
        return str(self.path(key))

    def task_uri(self, key: str) -> str:
        """Label Studio's local-files URL; valid when ``root`` is its ``LOCAL_FILES_DOCUMENT_ROOT``."""
        return f"{LOCAL_FILES_URL}{_check_key(key)}"

    @contextmanager
    def _io(self, key: str, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(f"could not {what} {self.path(key)} ({exc.strerror or exc}); check that the folder "
                               "exists, is writable and has free space") from exc

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"


class S3Storage:
    """Objects in ``bucket`` under ``prefix``, through a boto3 S3 ``client`` (whose endpoint, region and
    credentials are the caller's: AWS, MinIO, moto ...)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        if not bucket:
            raise StorageError("no S3 bucket given; set HALI_STORAGE_URL to s3://<bucket>/<prefix>")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    def object_key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """Fail now, with a message naming the setting to fix, if the bucket cannot be used."""
        with self._calling(f"could not reach bucket s3://{self.bucket}", about_bucket=True):
            self._client.head_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._calling(f"could not write {self.location(key)}"):
            self._client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        with self._calling(f"could not read {self.location(key)}"):
            return self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        return self.version(key) is not None

    def keys(self, prefix: str) -> set[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        found: set[str] = set()
        with self._calling(f"could not list s3://{self.bucket}/{root}{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix)
            for page in pages:
                found.update(obj["Key"][len(root):] for obj in page.get("Contents", []))
        return found

    def version(self, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        doing = f"could not look up {self.location(key)}"
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            # HEAD has no error body: a missing object and a missing bucket are both a bare 404 (check() tells)
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self._error(doing, exc) from exc
        except BotoCoreError as exc:
            raise self._error(doing, exc) from exc
        return f"{head.get('ETag', '')}:{head.get('LastModified', '')}"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def task_uri(self, key: str) -> str:
        return self.location(key)

    @contextmanager
    def _calling(self, doing: str, about_bucket: bool = False) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(doing, exc, about_bucket) from exc

    def _error(self, doing: str, exc: Exception, about_bucket: bool = False) -> StorageError:
        endpoint = str(getattr(self._client.meta, "endpoint_url", "") or "AWS S3")
        return StorageError(describe_s3_error(exc, doing, self.bucket, endpoint, about_bucket))

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"


def describe_s3_error(exc: Exception, doing: str, bucket: str, endpoint: str, about_bucket: bool = False) -> str:
    """One line for a boto3 failure: what failed, why, and which setting fixes it. ``about_bucket``: the call
    was on the bucket itself (HEAD bucket), so a bare 404 means the bucket is missing."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return f"{doing}: no usable AWS credentials ({exc}); {_CREDENTIALS_FIX}"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return f"{doing}: the S3 endpoint {endpoint} is unreachable ({exc}); start it or fix HALI_S3_ENDPOINT_URL"
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in _DENIED_CODES:
            return f"{doing}: S3 at {endpoint} refused the credentials ({code}); {_CREDENTIALS_FIX}"
        if code in _MISSING_BUCKET_CODES or (code in _MISSING_KEY_CODES and about_bucket):
            return (f"{doing}: bucket {bucket!r} does not exist at {endpoint}; create it or fix the bucket in "
                    "HALI_STORAGE_URL")
        if code in _MISSING_KEY_CODES:
            return f"{doing}: no such object; run `hali preprocess` for this slide with the same HALI_STORAGE_URL"
        return f"{doing}: S3 at {endpoint} answered {code} ({exc}); check HALI_STORAGE_URL and the credentials"
    return f"{doing}: {exc.__class__.__name__}: {exc}; check HALI_STORAGE_URL and HALI_S3_ENDPOINT_URL"


@dataclass(frozen=True)
class S3Access:
    """What Label Studio needs to read the bucket itself (its S3 import storage): the endpoint, region and
    the credentials boto3 resolved here. None values leave Label Studio to its own AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OutputStorage:
    """The two places preprocessing writes: ``tables`` (cells.npz, tasks.json) and ``tiles`` (PNGs).

    Locally they are ``HALI_DATA_DIR`` and Label Studio's files root; with S3 both are the same bucket
    and prefix, so the keys lay out one tree.
    """

    tables: Storage
    tiles: Storage
    s3_access: S3Access | None = None

    @property
    def s3(self) -> S3Storage | None:
        """The S3 storage the tiles live in, or None when they are local files."""
        return self.tiles if isinstance(self.tiles, S3Storage) else None

    def check(self) -> None:
        """StorageError now, naming the setting to fix, if the S3 bucket cannot be used (local: nothing to do,
        folders are made on the first write)."""
        for storage in {id(s): s for s in (self.tables, self.tiles)}.values():
            if isinstance(storage, S3Storage):
                storage.check()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; StorageError for anything else."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"HALI_STORAGE_URL {url!r} is not s3://<bucket>/<prefix>; unset it to keep outputs in "
                           "HALI_DATA_DIR and HALI_LS_FILES_ROOT")
    return parsed.netloc, parsed.path.strip("/")


def open_output_storage(storage_url: str | None, data_dir: Path, ls_files_root: Path,
                        s3_endpoint_url: str | None = None) -> OutputStorage:
    """Storages from settings: local folders when ``storage_url`` is empty, else S3 at ``s3://bucket/prefix``.

    The boto3 client takes its credentials and region from the standard chain (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, instance roles ...).
    """
    if not storage_url:
        return OutputStorage(tables=LocalStorage(data_dir), tiles=LocalStorage(ls_files_root))
    bucket, prefix = parse_s3_url(storage_url)
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
    try:
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=s3_endpoint_url or None, config=config)
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except (BotoCoreError, ValueError) as exc:  # a bad profile, region or endpoint URL
        raise StorageError(f"cannot set up S3 for {storage_url} ({exc}); check HALI_S3_ENDPOINT_URL, AWS_PROFILE "
                           "and AWS_DEFAULT_REGION") from exc
    s3 = S3Storage(bucket, prefix, client)
    access = S3Access(s3_endpoint_url or None, client.meta.region_name,
                      frozen.access_key if frozen else None, frozen.secret_key if frozen else None,
                      frozen.token if frozen else None)
    return OutputStorage(tables=s3, tiles=s3, s3_access=access)


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageKeyError(f"storage key {key!r} must be a relative path without '.', '..' or empty parts")
    return key


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
