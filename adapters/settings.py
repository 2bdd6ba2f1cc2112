"""The settings every entry point shares: where data lives, and how to reach Label Studio, storage and Redis.

:class:`SharedSettings` is the base of ``preprocess.settings.PreprocessSettings`` and
``ml_backend.settings.BackendSettings``, so a ``HALI_*`` variable means one thing everywhere. Built once
per entry point from the environment and passed down; :func:`describe_validation_error` turns pydantic's
multi-line report into the one line the CLI prints, naming the variable to fix.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "HALI_"


class SharedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(Path(".state/data"), description="cell tables, embeddings and models, per slide")
    ls_url: str = "http://127.0.0.1:8080"
    ls_api_key: SecretStr = SecretStr("")
    ls_files_root: Path = Field(
        Path(".state/ls-files"), description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT; tiles go under hali/"
    )
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix for tiles, cell tables and tasks.json; unset: data_dir and ls_files_root"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto, ...); unset: AWS")
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = Field("hali", description="rq queue of retrain jobs")
    preprocess_queue_name: str = Field("hali-preprocess", description="rq queue of `hali preprocess --queue` jobs")
    preprocess_lease_s: float = Field(
        30.0, gt=0, description="a region job not heard from for this long is dead, and re-enqueued on a re-run"
    )
    job_timeout_s: int = Field(1800, ge=1, description="an rq job running longer is stopped (merge jobs: 4x)")
    # The backend's credentials: `hali serve` checks them, `hali preprocess` gives them to Label Studio.
    backend_user: str = Field("hali", description="HTTP basic-auth user Label Studio uses to call the backend")
    backend_password: SecretStr = Field(
        SecretStr(""), description="if set, every backend route but /health needs basic auth with this password"
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""), description="if set, /webhook requires header X-Hali-Secret with this value"
    )

    @field_validator("data_dir", "ls_files_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad setting by its variable, with pydantic's reason: ``HALI_STRATEGY='x': ...``."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ())) or "?"
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{ENV_PREFIX}{field.upper()}{shown}: {error.get('msg', 'invalid')}")
    return "bad setting " + "; ".join(parts) + " (set the variable to an allowed value, or unset it for the default)"


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``redis://:pw@host:6379/0`` -> ``redis://:***@host:6379/0``),
    for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))
