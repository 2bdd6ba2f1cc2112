"""Settings of the ML backend (``hali serve``) and its jobs (``hali worker``), from ``HALI_*`` variables.

Built once per entry point (``create_app``, the worker, each job) and passed down.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HALI_", extra="ignore")

    data_dir: Path = Path(".state/data")
    ls_url: str = "http://127.0.0.1:8080"
    ls_api_key: SecretStr = SecretStr("")
    ls_files_root: Path = Path(".state/ls-files")
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix where `hali preprocess` put the cell tables; unset: data_dir"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto, ...); unset: AWS")
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "hali"
    preprocess_queue_name: str = Field("hali-preprocess", description="rq queue of `hali preprocess --queue` jobs")
    preprocess_lease_s: float = Field(
        30.0, gt=0, description="a region job not heard from for this long is dead, and re-enqueued on a re-run"
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""), description="if set, /webhook requires header X-Hali-Secret with this value"
    )
    retrain_every: int = Field(5, ge=1, description="new cell labels that trigger a retrain")
    strategy: str = Field(
        "coreset", description="query strategy: coreset, entropy, margin, random, sequential, relevance, hybrid"
    )
    # relevance / hybrid (Sadafi et al. 2019; ml_backend/relevance.py). Only these two use MC passes.
    mc_passes: int = Field(10, ge=1, description="stochastic (MC dropout) head passes for relevance/hybrid")
    mc_dropout: float = Field(
        0.25, ge=0.0, lt=1.0, description="head dropout when relevance/hybrid is selected (0 for the others)"
    )
    relevance_alpha: float = Field(1.0, ge=0.0, description="tile score weight of #(U_c <= certainty max)")
    relevance_beta: float = Field(1.0, ge=0.0, description="weight of #(U_d <= detection max); U_d is 1 here")
    relevance_gamma: float = Field(10.0, ge=0.0, description="weight of #cells flagged as the rare class")
    relevance_class_certainty_max: float = Field(0.8, ge=0.0, le=1.0, description="U_c at or below: uncertain")
    relevance_detection_certainty_max: float = Field(0.9, ge=0.0, le=1.0, description="U_d at or below: uncertain")
    relevance_rare_min_proba: float = Field(0.2, ge=0.0, le=1.0, description="mean p(rare) above: rare flag")
    relevance_rare_class: str = Field("", description="the rare class's name; empty: the class with fewest labels")
    optimizer: str = Field("adam", description="head optimiser preset: adam (default) or paper-sgd")
    query_budget: int = Field(100, ge=1, description="cells the strategy picks before they roll up to tiles")
    seed: int = 0
    torch_threads: int = Field(
        1, ge=1, description="torch threads per process: the head is tiny, and more threads only add overhead"
    )
    job_timeout_s: int = 1800

    @field_validator("data_dir", "ls_files_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()
