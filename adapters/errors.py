"""Exceptions of the adapters: a service or file that the project's own code cannot do without.

Each message says what was wrong, which value, and what to do about it, on one line (the CLI prints it after
``hali <command>: error:`` and exits 2; the backend turns it into a JSON error). ``adapters.retry.RetriesExhausted``
is not part of the tree: it only carries a retried call's last error to the adapter, which turns it into one of
these::

    AdapterError(Exception)
    +-- LabelStudioError   Label Studio is down, refused the key, rejected a call, or stopped answering
    |                      mid-import after the retries (re-running the same command resumes)
    +-- StorageError       output storage (local folder or S3) that cannot be read or written
    |   +-- StorageKeyError  a storage key (a slide id, a tile id) that is not a plain relative path
    +-- SlideError         a slide that is missing, empty, truncated, corrupt, unsupported, blank, has no mpp,
                           or fails to decode part way (the message names the level-0 region)
"""


class AdapterError(Exception):
    """Base class: a service or file behind an adapter cannot be used."""


class LabelStudioError(AdapterError):
    """A Label Studio call failed: server down, bad API key, or a rejected request."""


class StorageError(AdapterError):
    """Tiles or tables cannot be stored or read: bad S3 credentials, a missing bucket, an unreachable
    endpoint, a folder that is not writable, or an object that is not there."""


class StorageKeyError(StorageError, ValueError):
    """A storage key that is not a plain relative path: a slide or tile id with '..', '/' or nothing in it."""


class SlideError(AdapterError):
    """A slide that cannot be read, or lacks metadata that preprocessing needs."""
