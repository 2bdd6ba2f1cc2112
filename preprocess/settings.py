"""Settings of ``hali preprocess``, read once at the entry point from ``HALI_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from adapters.retry import RetryPolicy
from adapters.settings import SharedSettings

DEFAULT_CLASSES = ("Tumor", "Lymphocyte", "Stroma", "Other")


class PreprocessSettings(SharedSettings):
    """How a slide is cut into tasks (where things go: :class:`SharedSettings`)."""

    s3_presign: bool = Field(True, description="Label Studio sends browsers presigned S3 URLs (else it proxies)")
    tile_mpp: float = Field(
        0.5, gt=0, description="microns per pixel of tile images (0.5 = 20x); finer scans are downsampled to it"
    )
    backend_url: str | None = Field(None, description="URL Label Studio uses to reach `hali serve`")
    classes: str = ",".join(DEFAULT_CLASSES)
    cells_per_task: int = Field(
        20, ge=1, le=2000, description="cells marked per task (tile mode); in focused mode, cells of context shown"
    )
    # docs/tasks.md: tile mode reads well at 256 px and keeps the simulation's 20-cell speed-up; focused tasks
    # show the same context with fewer marks, for slides where a pathologist wants to look around more.
    task_mode: Literal["tile", "focused"] = Field(
        "tile", description="tile: a window of about cells_per_task marked cells; focused: a context window of "
        "about cells_per_task cells in which only focus_cells carry marks"
    )
    mark: Literal["rectangle", "keypoint"] = Field(
        "rectangle", description="how each cell to label is marked: a box, or a dot at its centre (docs/tasks.md)"
    )
    focus_cells: int = Field(10, ge=1, le=200, description="cells marked in a focused task (task_mode=focused)")
    overlap_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of tasks read by overlap_readers annotators, for agreement (Label "
        "Studio's overlap_cohort_percentage); 0 leaves the project's setting as it is"
    )
    overlap_readers: int = Field(2, ge=2, le=20, description="annotators per overlapping task (maximum_annotations)")
    tile_min_px: int = Field(
        256, ge=32, le=4096, description="smallest side of a task image, in tile pixels (at tile_mpp)"
    )
    patch_um: float = Field(20.0, gt=0, description="side of the square around each nucleus that is embedded")
    mpp: float | None = Field(None, gt=0, description="microns per pixel, for slides without that metadata")
    checkpoint: Path | None = Field(None, description="weights of the featurizer: cellnet, ResNet-18 or encoder")
    # The packaged cellnet CNN beats the handcrafted measurements at every N on CoNSeP (docs/features.md), so
    # a fresh install uses it; a checkpoint given without a featurizer picks the ResNet-18 it is for.
    featurizer: Literal["cellnet", "handcrafted", "resnet18", "encoder"] = Field(
        "cellnet", description="how cells are embedded: the packaged CNN (cellnet; HALI_CHECKPOINT may name other "
                               "weights), stain/shape/texture measurements, a ResNet-18, or any torchvision/timm "
                               "encoder (HALI_ENCODER) with weights from HALI_CHECKPOINT"
    )
    encoder: str | None = Field(None, description="featurizer 'encoder': timm:<arch> or torchvision:<arch>")
    encoder_input_px: int = Field(224, ge=16, le=1024, description="side the encoder's input patches are resized to")
    window_px: int = Field(2048, ge=256, description="side of the square windows segmented one at a time")
    region_windows: int = Field(
        2, ge=1, le=64, description="a region (the unit of resumable, queued work) is this many windows a side"
    )
    device: str = "cpu"
    segmenter: Literal["auto", "learned", "classical"] = Field(
        "auto", description="nucleus segmenter: learned (a compact U-Net trained on CoNSeP H&E), classical "
                            "(colour deconvolution + watershed), or auto: learned on H&E, classical on IHC"
    )
    segmenter_weights: Path | None = Field(
        None, description="HoVer-Net checkpoint (original repo or tiatoolbox layout); none: the classical segmenter"
    )
    segmenter_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="HoVer-Net's device: auto (CUDA when there is one), cpu, cuda")
    max_blur: float = Field(
        0.6, ge=0.0, le=1.0, description="nuclei in out-of-focus tissue are not offered: blocks of 50 um whose "
        "blur (skimage's blur_effect, 0 sharp .. 1 blurred) exceeds this are dropped; 1 keeps everything "
        "(docs/segmentation.md, 'Out-of-focus tissue')"
    )
    progress: bool = True
    # Label Studio blinks (restart, proxy timeout): imports retry a few times, then stop with a resumable error.
    ls_timeout_s: float = Field(60.0, gt=0, description="seconds to wait for one Label Studio answer")
    ls_import_batch_size: int = Field(100, ge=1, le=10000, description="tasks per import request")
    ls_retry_tries: int = Field(4, ge=1, le=20, description="tries per Label Studio import request (1: no retry)")
    ls_retry_first_delay_s: float = Field(1.0, ge=0, description="sleep before the 2nd try; doubles, capped at 8 s")
    ls_retry_deadline_s: float = Field(30.0, ge=0, description="no retry starts later than this after the 1st try")

    @model_validator(mode="after")
    def _checkpoint_means_resnet18(self) -> PreprocessSettings:
        if self.checkpoint is not None and "featurizer" not in self.model_fields_set:
            self.featurizer = "encoder" if self.encoder else "resnet18"
        if self.featurizer == "encoder" and not (self.encoder and self.checkpoint):
            raise ValueError("featurizer 'encoder' needs HALI_ENCODER (e.g. timm:vit_small_patch16_224) and "
                             "HALI_CHECKPOINT (its weights, a state_dict file)")
        return self

    def retry_policy(self) -> RetryPolicy:
        """How Label Studio import requests are retried."""
        return RetryPolicy(tries=self.ls_retry_tries, first_delay_s=self.ls_retry_first_delay_s,
                           deadline_s=self.ls_retry_deadline_s)

    def class_list(self) -> list[str]:
        return [c.strip() for c in self.classes.split(",") if c.strip()]
