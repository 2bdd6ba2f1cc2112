"""Fine-tune (or train) HoVer-Net on images with nucleus instance masks: ``hali train-segmenter``.

As in the paper (Graham et al. 2019, section 4.3): Adam, and two phases -- first only the decoders learn
while the encoder is frozen (its BatchNorm statistics too: fine-tuning batches are small), then the whole
network. Each epoch ends with the loss and detection/PQ scores (:mod:`preprocess.nuclei.metrics`, the same as
``bench/bench_segmentation.py``) on a validation split held out by source image; the epoch with the lowest
validation loss is what is saved, and training stops after ``patience`` epochs without improvement.

The checkpoint is a plain HoVer-Net ``state_dict`` (the layout tiatoolbox uses), so
``hali preprocess --segmenter-weights OUT`` and :class:`HoVerNetSegmenter` load it with no option; a JSON
sidecar beside it (``OUT`` with suffix ``.json``) records the data, options, losses and metrics. Both are
written atomically (temporary file, then ``os.replace``), weights first.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from adapters.atomic import write_atomic
from preprocess.errors import SegmenterTrainingError
from preprocess.nuclei.hovernet.datasets import MaskDataset, load_mask_dataset, split_by_source
from preprocess.nuclei.hovernet.losses import hovernet_loss
from preprocess.nuclei.hovernet.model import MODES, HoVerNet
from preprocess.nuclei.hovernet.postprocess import instances_from_maps
from preprocess.nuclei.hovernet.segmenter import resolve_device
from preprocess.nuclei.hovernet.targets import TrainingPatch, make_patch
from preprocess.nuclei.hovernet.weights import check_state_dict, infer_architecture, read_checkpoint, unwrap_state_dict
from preprocess.nuclei.metrics import panoptic_quality, pooled, precision_recall_f1, score_instances

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "hali-hovernet-train/1"
ENCODER_MODULES = ("conv0", "d0", "d1", "d2", "d3")  # frozen in phase 1; conv_bot learns, as in the reference


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run.

    ``mode``: "fast" (256 -> 164 px) or "original" (270 -> 80); None takes the init checkpoint's, else fast.
    ``freeze_epochs``: epochs of phase 1 (encoder frozen); None: half the epochs when starting from a
    checkpoint, 0 from random weights (a random encoder is not worth keeping). ``patch_px``: training input
    side (default the mode's; 8k for fast, 8k + 6 for original). ``lr``: Adam's learning rate (the paper's
    1e-4). ``patience``: epochs without a lower validation loss before stopping. ``limit``: use at most
    this many images (quick runs). ``val_fraction``: share of source images held out.
    """

    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-4
    freeze_epochs: int | None = None
    mode: str | None = None
    patch_px: int | None = None
    val_fraction: float = 0.2
    patience: int = 3
    augmentation: bool = True
    limit: int | None = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= {low}, got {getattr(self, name)}"
                    for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 1)) if getattr(self, name) < low]
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.freeze_epochs is not None and not 0 <= self.freeze_epochs <= self.epochs:
            problems.append(f"freeze_epochs must be in 0..epochs ({self.epochs}), got {self.freeze_epochs}")
        if self.mode is not None and self.mode not in MODES:
            problems.append(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if problems:
            raise SegmenterTrainingError("; ".join(problems))


def build_model(n_types: int | None, mode: str | None, init_weights: Path | None) -> HoVerNet:
    """A HoVer-Net for ``n_types`` (None: no type branch), random or from ``init_weights`` (any layout
    :func:`~preprocess.nuclei.hovernet.weights.load_hovernet` reads). A type branch of another size, or one the
    checkpoint lacks, starts from random weights; every other tensor must fit."""
    if init_weights is None:
        model = HoVerNet(mode or "fast", n_types)
        _quiet_heads(model, list(model.decoder))
        return model
    source = str(init_weights)
    state = unwrap_state_dict(read_checkpoint(Path(init_weights)), source)
    ckpt_mode, ckpt_types = infer_architecture(state, source)
    if mode is not None and mode != ckpt_mode:
        raise SegmenterTrainingError(f"--mode {mode} but {source} is a {ckpt_mode}-mode HoVer-Net; drop --mode")
    with torch.device("meta"):
        check_state_dict(HoVerNet(ckpt_mode, ckpt_types), state, source)
    model = HoVerNet(ckpt_mode, n_types)
    own = model.state_dict()
    fitting = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
               if k in own and own[k].shape == v.shape}
    fresh = [k for k in own if k not in fitting and k.startswith("decoder.tp.")]
    model.load_state_dict(fitting, strict=False)
    if fresh:
        _quiet_heads(model, ["tp"])
    logger.info("initialised %s-mode HoVer-Net from %s; %d type-branch tensors start random (checkpoint types %s, "
                "data types %s)", ckpt_mode, source, len(fresh), ckpt_types, n_types)
    return model


def _quiet_heads(model: HoVerNet, branches: Sequence[str]) -> None:
    """Start the last 1x1 convolution of ``branches`` near zero: the default Kaiming init makes HV outputs
    of about +-10 whose Sobel gradients give an MSGE in the hundreds, which swamps the first steps."""
    for name in branches:
        head = model.decoder[name].u0.conv
        nn.init.normal_(head.weight, std=1e-3)
        nn.init.zeros_(head.bias)


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Stop (or restart) gradients through the encoder; a frozen encoder also keeps its BatchNorm statistics."""
    for name in ENCODER_MODULES:
        module = getattr(model, name)
        module.requires_grad_(not frozen)
        module.train(model.training and not frozen)


def to_batch(patches: Sequence[TrainingPatch], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(float (B, 3, in, in) RGB 0..255, targets {"np", "hv" (B, 2, out, out), "tp"?}) on ``device``."""
    x = torch.from_numpy(np.stack([p.rgb for p in patches])).permute(0, 3, 1, 2).float()
    targets = {"np": torch.from_numpy(np.stack([p.np for p in patches])),
               "hv": torch.from_numpy(np.stack([p.hv for p in patches])).permute(0, 3, 1, 2)}
    if patches[0].tp is not None:
        targets["tp"] = torch.from_numpy(np.stack([p.tp for p in patches]))
    return x.to(device), {k: v.to(device) for k, v in targets.items()}


class SegmenterTrainer:
    """Trains a HoVer-Net on a :class:`MaskDataset` (scikit-learn style: options in ``__init__``, ``fit``).

    Learned attributes: ``model_`` (the best epoch's weights, eval mode), ``history_`` (one dict per epoch:
    phase, train loss terms, validation loss and metrics, seconds), ``best_epoch_`` (1-based).
    ``on_best(trainer)`` runs whenever an epoch becomes the best, ``on_epoch(trainer)`` after every epoch.
    """

    def __init__(self, config: TrainConfig, init_weights: Path | None = None, progress: bool = True,
                 on_best: Callable[[SegmenterTrainer], None] | None = None,
                 on_epoch: Callable[[SegmenterTrainer], None] | None = None) -> None:
        self.config, self.init_weights, self.progress = config, init_weights, progress
        self.on_best, self.on_epoch = on_best, on_epoch

    def fit(self, dataset: MaskDataset, model: nn.Module | None = None) -> SegmenterTrainer:
        """Train on ``dataset``; ``model`` replaces the HoVer-Net built from the config (it must have
        HoVer-Net's outputs, ``spec`` and encoder module names)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.device_ = resolve_device(cfg.device)
        if model is None:
            model = build_model(dataset.n_types, cfg.mode, self.init_weights)
        self.model_ = model.to(self.device_)
        self.input_px_, self.output_px_ = _patch_geometry(self.model_, cfg.patch_px)
        self.train_idx_, self.val_idx_ = self._split(dataset, rng)
        freeze = cfg.freeze_epochs if cfg.freeze_epochs is not None else (
            cfg.epochs // 2 if self.init_weights else 0)
        self.history_, self.best_epoch_, best_loss, best_state = [], 0, math.inf, None
        logger.info("training %s-mode HoVer-Net on %d images, validating on %d; %d frozen-encoder epochs of %d",
                    self.model_.mode, len(self.train_idx_), len(self.val_idx_), freeze, cfg.epochs)
        optimizer = None
        for epoch in range(1, cfg.epochs + 1):
            frozen = epoch <= freeze
            if optimizer is None or epoch == freeze + 1:  # a new optimiser per phase, as in the reference
                optimizer = self._optimizer(frozen)
            start = time.perf_counter()
            row = {"epoch": epoch, "phase": "decoders" if frozen else "all",
                   **self._train_epoch(dataset, optimizer, frozen, rng, epoch)}
            row.update(self.evaluate(dataset, self.val_idx_) if len(self.val_idx_) else {})
            row["seconds"] = round(time.perf_counter() - start, 1)
            self.history_.append(row)
            score = row.get("val_loss", row["train_loss"])
            logger.info("epoch %d/%d: %s", epoch, cfg.epochs, _fmt(row))
            if score < best_loss:
                best_loss, self.best_epoch_ = score, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in self.model_.state_dict().items()}
                if self.on_best:
                    self.on_best(self)
            if self.on_epoch:
                self.on_epoch(self)
            if epoch - self.best_epoch_ >= cfg.patience and len(self.val_idx_):
                logger.info("stopping: no lower validation loss for %d epochs (best epoch %d)", cfg.patience,
                            self.best_epoch_)
                break
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        self.model_.eval()
        return self

    def _split(self, dataset: MaskDataset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        chosen = np.arange(len(dataset))
        if cfg.limit is not None and cfg.limit < len(dataset):
            chosen = np.sort(rng.choice(len(dataset), cfg.limit, replace=False))
        train, val = split_by_source([dataset.sources[i] for i in chosen], cfg.val_fraction, cfg.seed)
        return chosen[train], chosen[val]

    def _optimizer(self, frozen: bool) -> torch.optim.Optimizer:
        self.model_.train()
        set_encoder_frozen(self.model_, frozen)
        params = [p for p in self.model_.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.config.lr, betas=(0.9, 0.999))

    def _train_epoch(self, dataset: MaskDataset, optimizer: torch.optim.Optimizer, frozen: bool,
                     rng: np.random.Generator, epoch: int) -> dict[str, float]:
        cfg = self.config
        self.model_.train()
        set_encoder_frozen(self.model_, frozen)
        order = rng.permutation(self.train_idx_)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        sums: dict[str, float] = {}
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs} ({'decoders' if frozen else 'all'})",
                   unit="batch", disable=not self.progress, leave=False)
        for batch in bar:
            patches = [make_patch(dataset[int(i)], self.input_px_, self.output_px_, rng, cfg.augmentation)
                       for i in batch]
            x, targets = to_batch(patches, self.device_)
            loss, terms = hovernet_loss(self.model_(x), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in {"loss": float(loss.detach()), **terms}.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        return {f"train_{k}": v / len(batches) for k, v in sums.items()}

    def evaluate(self, dataset: MaskDataset, indices: Sequence[int]) -> dict[str, float]:
        """Validation loss (and its terms) and pooled detection P/R/F1 and PQ over the centred output windows
        of ``dataset[indices]``, instances from HoVer-Net's own post-processing."""
        self.model_.eval()
        sums: dict[str, float] = {}
        scores = []
        with torch.inference_mode():
            for start in range(0, len(indices), self.config.batch_size):
                patches = [make_patch(dataset[int(i)], self.input_px_, self.output_px_)
                           for i in indices[start : start + self.config.batch_size]]
                x, targets = to_batch(patches, self.device_)
                out = self.model_(x)
                loss, terms = hovernet_loss(out, targets)
                for name, value in {"loss": float(loss), **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value * len(patches)
                prob = torch.softmax(out["np"], dim=1)[:, 1].cpu().numpy()
                hv = out["hv"].permute(0, 2, 3, 1).cpu().numpy()
                scores += [score_instances(p.inst, instances_from_maps(prob[j], hv[j])) for j, p in enumerate(patches)]
        total = pooled(scores)
        precision, recall, f1 = precision_recall_f1(total.tp, total.fp, total.fn)
        dq, sq, pq = panoptic_quality(total)
        metrics = {"val_precision": precision, "val_recall": recall, "val_f1": f1, "val_dq": dq, "val_sq": sq,
                   "val_pq": pq}
        return {**{f"val_{k}": v / len(indices) for k, v in sums.items()}, **metrics}


def _patch_geometry(model: nn.Module, patch_px: int | None) -> tuple[int, int]:
    """(input, output) sides of the training patches."""
    spec = model.spec
    patch_px = patch_px or spec.input_px
    if patch_px <= 2 * spec.margin_px or (patch_px - spec.input_px) % 8:
        raise SegmenterTrainingError(f"--patch-px {patch_px} does not fit {model.mode}-mode HoVer-Net: use "
                                     f"{spec.input_px} + 8k, larger than {2 * spec.margin_px}")
    return patch_px, patch_px - 2 * spec.margin_px


def save_segmenter(out: Path, trainer: SegmenterTrainer, meta: dict[str, Any]) -> Path:
    """Write the model's ``state_dict`` to ``out`` (if ``meta['write_weights']``, default True) and the sidecar
    to ``out.with_suffix('.json')``, each atomically, weights first. Returns the sidecar's path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    if meta.pop("write_weights", True):
        state = {k: v.detach().cpu() for k, v in trainer.model_.state_dict().items()}
        write_atomic(out, lambda f: torch.save(state, f))
    best = trainer.history_[trainer.best_epoch_ - 1] if trainer.best_epoch_ else {}
    payload = {
        "format": SIDECAR_FORMAT, "architecture": f"HoVer-Net {trainer.model_.mode} mode",
        "mode": trainer.model_.mode, "n_types": trainer.model_.n_types, **meta,
        "config": asdict(trainer.config), "input_px": trainer.input_px_, "output_px": trainer.output_px_,
        "n_train": len(trainer.train_idx_), "n_val": len(trainer.val_idx_), "device": str(trainer.device_),
        "epochs_run": len(trainer.history_), "best_epoch": trainer.best_epoch_,
        "losses": {k: v for k, v in best.items() if k.endswith("loss")},
        "metrics": {k: v for k, v in best.items() if k.startswith("val_") and not k.endswith("loss")
                    and not k.startswith(("val_np", "val_hv", "val_tp"))},
        "history": trainer.history_,
    }
    sidecar = out.with_suffix(".json")
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    write_atomic(sidecar, lambda f: f.write(text.encode()))
    return sidecar


def run_train_segmenter(data: Path, data_format: str, out: Path, config: TrainConfig,
                        init_weights: Path | None = None, split: str = "train", progress: bool = True) -> dict:
    """Read the masks, train, and save the best epoch to ``out`` (+ sidecar); returns the sidecar's contents."""
    if Path(out).is_dir():
        raise SegmenterTrainingError(f"--out {out} is a folder; pass a file path such as {Path(out) / 'hovernet.pth'}")
    dataset = load_mask_dataset(data, data_format, split)
    meta = {"data": str(data), "data_format": data_format, "split": split, "description": dataset.description,
            "type_names": list(dataset.type_names), "init_weights": str(init_weights) if init_weights else None}
    trainer = SegmenterTrainer(
        config, init_weights, progress,
        on_best=lambda t: save_segmenter(out, t, meta),
        on_epoch=lambda t: save_segmenter(out, t, {**meta, "write_weights": False}),
    )
    trainer.fit(dataset)
    return json.loads(Path(out).with_suffix(".json").read_text())


def _fmt(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
