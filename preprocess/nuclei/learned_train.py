"""Train :class:`~preprocess.nuclei.unet.NucleusUNet` on CoNSeP-style patches (CPU, fixed seed).

    python -m preprocess.nuclei.learned_train --consep ../shared/data/consep_patches --out run1/nuclei_unet_consep.pt
    python -m preprocess.nuclei.learned_train --consep ../shared/data/consep_patches \
        --out preprocess/nuclei/weights/nuclei_unet_consep.pt --init-weights run1/nuclei_unet_consep.pt \
        --steps 1500 --lr 1e-3 --od-scale-max 2.5 --eosin-drop 0.2     # how the packaged weights were made

Data: ``inst_maps_train.npz`` (``names``, ``inst`` (N, rows, cols) instance ids) and ``images/<name>.jpg``
at 40x (0.25 um/px). Patches are grouped by source image (``train_10_003`` -> ``train_10``) and
``--val-sources`` whole source images are held out for validation and for tuning the post-processing.

Each patch is resampled to the working scale (:data:`~preprocess.nuclei.learned.WORKING_MPP`) times a
scale jitter from :data:`SCALES`; the targets are made there: foreground (instance > 0) and each nucleus'
distance to its own edge divided by its largest distance (:func:`distance_target`). Training crops are
rotated by k x 90 degrees, mirrored, and colour-jittered in HED optical density (:func:`hed_jitter`),
with some blur and noise, so that other scanners' H&E looks familiar. Output: the ``state_dict`` (float16)
and a JSON sidecar, written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed

from adapters.atomic import write_atomic
from preprocess.nuclei.learned import (
    DEFAULT_POSTPROCESS,
    WORKING_MPP,
    Postprocess,
    labels_from_maps,
    predict_maps,
    resample_rgb,
)
from preprocess.nuclei.metrics import panoptic_quality, pooled, precision_recall_f1, score_instances
from preprocess.nuclei.unet import NucleusUNet

logger = logging.getLogger(__name__)

CONSEP_MPP = 0.25
SCALES = (0.8, 0.9, 1.0, 1.12, 1.25)  # scale jitter around the working scale
SOURCE = re.compile(r"^(.+)_\d{3}$")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (all go into the sidecar)."""

    channels: tuple[int, ...] = (12, 24, 48, 64)
    steps: int = 4500
    batch_size: int = 16
    crop_px: int = 96
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_sources: int = 4
    seed: int = 0
    threads: int = 1
    od_scale_max: float = 1.0  # darken/lighten the whole image's optical density by up to this (log-uniform)
    eosin_drop: float = 0.0  # probability of an IHC-like crop: eosin scaled down to 10-50 %
    init_weights: str = ""  # fine-tune from this state_dict (its sidecar gives the channels)


@dataclass(frozen=True)
class Patch:
    """One patch at 40x: ``rgb`` uint8 (rows, cols, 3), ``inst`` int32 (rows, cols), ``source`` image name."""

    name: str
    rgb: np.ndarray
    inst: np.ndarray
    source: str


def read_consep(root: Path, split: str) -> list[Patch]:
    """All patches of ``split`` under ``root`` (``inst_maps_<split>.npz`` + ``images/<name>.jpg``)."""
    npz = np.load(root / f"inst_maps_{split}.npz")
    patches = []
    for name, inst in zip(npz["names"], npz["inst"]):
        rgb = np.asarray(Image.open(root / "images" / f"{name}.jpg").convert("RGB"))
        patches.append(Patch(str(name), rgb, inst.astype(np.int32), SOURCE.match(str(name)).group(1)))
    return patches


def split_sources(patches: list[Patch], n_val: int, seed: int) -> tuple[list[Patch], list[Patch]]:
    """(train, validation): ``n_val`` source images, drawn with ``seed``, go wholly to validation."""
    sources = sorted({p.source for p in patches})
    val = set(np.random.default_rng(seed).choice(sources, size=n_val, replace=False).tolist())
    return [p for p in patches if p.source not in val], [p for p in patches if p.source in val]


def resample_labels(inst: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int32 instance map resized to ``shape`` (rows, cols) by nearest neighbour."""
    return np.asarray(Image.fromarray(inst.astype(np.int32)).resize(shape[::-1], Image.NEAREST)).astype(np.int32)


def distance_target(inst: np.ndarray) -> np.ndarray:
    """float32 (rows, cols): each nuclear pixel's distance to its own nucleus' edge over that nucleus' maximum
    (so 1 at every nucleus' centre, small where touching nuclei meet), 0 on background."""
    out = np.zeros(inst.shape, np.float32)
    for label, box in enumerate(ndi.find_objects(inst), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mine = np.pad(inst[grown] == label, 1)
        dist = ndi.distance_transform_edt(mine)[1:-1, 1:-1]
        inside = mine[1:-1, 1:-1]
        out[grown][inside] = dist[inside] / dist.max()
    return out


def working_samples(patches: list[Patch], scales: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb uint8 (r, c, 3), target float32 (2, r, c)) per patch and scale, at the working scale x jitter."""
    samples = []
    for patch in patches:
        for scale in scales:
            factor = CONSEP_MPP / WORKING_MPP * scale
            shape = (round(patch.rgb.shape[0] * factor), round(patch.rgb.shape[1] * factor))
            inst = resample_labels(patch.inst, shape)
            target = np.stack([(inst > 0).astype(np.float32), distance_target(inst)])
            samples.append((resample_rgb(patch.rgb, shape), target))
    return samples


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.25, od_scale_max: float = 1.0,
               eosin_drop: float = 0.0) -> np.ndarray:
    """float32 (rows, cols, 3) in 0..1: ``rgb`` uint8 with each HED stain's optical density scaled by
    1 +- ``strength`` and shifted by +- 0.05 x ``strength`` (Tellez et al. 2018); then, when ``od_scale_max``
    > 1, all stains scaled by a log-uniform factor in [1 / sqrt(od_scale_max), od_scale_max] (darker scans,
    e.g. 20x Aperio nuclei are ~2.5x CoNSeP's optical density), and with probability ``eosin_drop`` eosin
    cut to 10-50 % (IHC counterstain without eosin)."""
    od = -np.log(np.maximum(rgb.astype(np.float32) / 255.0, 1e-6))
    stains = od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
    factors = rng.uniform(1 - strength, 1 + strength, 3)
    stains = stains * factors + rng.uniform(-0.05, 0.05, 3) * strength
    if od_scale_max > 1:
        stains = stains * np.exp(rng.uniform(-0.5 * np.log(od_scale_max), np.log(od_scale_max)))
    if eosin_drop > 0 and rng.random() < eosin_drop:
        stains[:, 1] *= rng.uniform(0.1, 0.5)
    rgb_out = np.exp(-(stains @ rgb_from_hed.astype(np.float32))).reshape(rgb.shape)
    return np.clip(rgb_out, 0.0, 1.0).astype(np.float32)


def augment(rgb: np.ndarray, target: np.ndarray, crop_px: int, rng: np.random.Generator, **colour):
    """A random crop, symmetry, colour jitter, blur and noise of one sample: (float32 (3, c, c), (2, c, c))."""
    y0, x0 = (int(rng.integers(max(n - crop_px, 0) + 1)) for n in rgb.shape[:2])
    rgb, target = rgb[y0:y0 + crop_px, x0:x0 + crop_px], target[:, y0:y0 + crop_px, x0:x0 + crop_px]
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    rgb, target = np.rot90(rgb, k, axes=(0, 1)), np.rot90(target, k, axes=(1, 2))
    if flip:
        rgb, target = rgb[:, ::-1], target[:, :, ::-1]
    image = hed_jitter(np.ascontiguousarray(rgb), rng, **colour)
    image = (image - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)  # contrast, brightness
    if rng.random() < 0.2:
        image = ndi.gaussian_filter(image, sigma=(rng.uniform(0.3, 1.0),) * 2 + (0,))
    image = image + rng.normal(0, rng.uniform(0, 0.02), image.shape)
    return np.clip(image, 0, 1).transpose(2, 0, 1).astype(np.float32), np.ascontiguousarray(target)


def batches(samples, batch_size: int, crop_px: int, rng: np.random.Generator, **colour):
    """Endless (x float32 (B, 3, c, c), y float32 (B, 2, c, c)) tensors of augmented samples."""
    while True:
        picks = rng.integers(len(samples), size=batch_size)
        pairs = [augment(*samples[i], crop_px, rng, **colour) for i in picks]
        yield torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Foreground BCE + soft Dice, plus BCE of the distance map against its soft target, and its MSE x 5."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fg_prob = torch.sigmoid(logits[:, 0])
    dice = 1 - (2 * (fg_prob * target[:, 0]).sum() + 1) / (fg_prob.sum() + target[:, 0].sum() + 1)
    dist_mse = ((torch.sigmoid(logits[:, 1]) - target[:, 1]) ** 2).mean()
    return bce(logits[:, 0], target[:, 0]) + dice + bce(logits[:, 1], target[:, 1]) + 5 * dist_mse


def evaluate(model: NucleusUNet, patches: list[Patch], post: Postprocess) -> dict[str, float]:
    """Pooled detection P/R/F1 and PQ of the model + ``post`` on ``patches`` (at their own 40x pixels)."""
    model.eval()
    scores = [score_instances(p.inst, labels_from_maps(*predict_maps(model, p.rgb, CONSEP_MPP), p.rgb,
                                                        CONSEP_MPP, post)) for p in patches]
    model.train()
    total = pooled(scores)
    p, r, f1 = precision_recall_f1(total.tp, total.fp, total.fn)
    return {"precision": p, "recall": r, "f1": f1, "pq": panoptic_quality(total)[2]}


def tune_postprocess(model: NucleusUNet, patches: list[Patch]) -> tuple[Postprocess, dict[str, float]]:
    """The post-processing thresholds with the best validation F1 over a small grid, and its metrics."""
    model.eval()
    maps = [predict_maps(model, p.rgb, CONSEP_MPP) for p in patches]
    best = (DEFAULT_POSTPROCESS, {"f1": -1.0})
    for fg in (0.4, 0.5, 0.6):
        for core in (0.3, 0.4, 0.5, 0.6):
            post = Postprocess(foreground=fg, core=core, min_area_um2=DEFAULT_POSTPROCESS.min_area_um2)
            total = pooled([score_instances(p.inst, labels_from_maps(*m, p.rgb, CONSEP_MPP, post))
                            for p, m in zip(patches, maps)])
            pr, r, f1 = precision_recall_f1(total.tp, total.fp, total.fn)
            logger.info("post fg %.2f core %.2f: P %.3f R %.3f F1 %.3f", fg, core, pr, r, f1)
            if f1 > best[1]["f1"]:
                best = (post, {"precision": pr, "recall": r, "f1": f1, "pq": panoptic_quality(total)[2]})
    return best


def train(consep: Path, out: Path, config: TrainConfig, command: str = "") -> dict:
    """Train, tune the post-processing on the held-out sources, write ``out`` and ``out.json``; the sidecar."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    train_patches, val_patches = split_sources(read_consep(consep, "train"), config.val_sources, config.seed)
    samples = working_samples(train_patches, SCALES)
    logger.info("%d train patches (%d samples), %d validation patches from %s", len(train_patches),
                len(samples), len(val_patches), sorted({p.source for p in val_patches}))
    model = NucleusUNet(config.channels)
    if config.init_weights:
        model.load_state_dict(torch.load(config.init_weights, map_location="cpu", weights_only=True))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    start, history, running = time.time(), [], 0.0
    colour = {"od_scale_max": config.od_scale_max, "eosin_drop": config.eosin_drop}
    for step, (x, y) in enumerate(batches(samples, config.batch_size, config.crop_px, rng, **colour), start=1):
        loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        running += loss.item()
        if step % 250 == 0 or step == config.steps:
            metrics = evaluate(model, val_patches, DEFAULT_POSTPROCESS) if step % 1000 == 0 else {}
            history.append({"step": step, "loss": running / 250, "seconds": round(time.time() - start), **metrics})
            logger.info("%s", history[-1])
            running = 0.0
        if step == config.steps:
            break
    post, val_metrics = tune_postprocess(model, val_patches)
    sidecar = {
        "format": "hali-nuclei-unet", "version": 1, "architecture": "NucleusUNet",
        "channels": list(config.channels), "working_mpp": WORKING_MPP, "postprocess": post.as_dict(),
        "hyperparameters": {**config.__dict__, "channels": list(config.channels), "scales": list(SCALES)},
        "validation": {"sources": sorted({p.source for p in val_patches}), "metrics": val_metrics},
        "history": history, "train_seconds": round(time.time() - start), "command": command,
        "data": "CoNSeP (Graham et al., HoVer-Net, Medical Image Analysis 2019), train split, 256 px patches",
        "licence": "weights derived from CoNSeP: research / non-commercial use; cite Graham et al. 2019",
    }
    save(model, sidecar, out)
    return sidecar


def save(model: NucleusUNet, sidecar: dict, out: Path) -> None:
    """Write the float16 ``state_dict`` to ``out`` and ``sidecar`` to ``out.json``, each atomically."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    write_atomic(out, lambda fh: torch.save(state, fh))
    write_atomic(out.with_suffix(".json"), lambda fh: fh.write(json.dumps(sidecar, indent=1).encode()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consep", type=Path, required=True, help="folder with inst_maps_train.npz and images/")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt; sidecar .json)")
    defaults = TrainConfig()
    for field in ("steps", "batch_size", "crop_px", "val_sources", "seed", "threads"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--od-scale-max", type=float, default=defaults.od_scale_max)
    parser.add_argument("--eosin-drop", type=float, default=defaults.eosin_drop)
    parser.add_argument("--init-weights", default="", help="fine-tune from this .pt (same --channels)")
    parser.add_argument("--channels", type=int, nargs="+", default=list(defaults.channels))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainConfig(channels=tuple(args.channels), steps=args.steps, batch_size=args.batch_size,
                         crop_px=args.crop_px, lr=args.lr, val_sources=args.val_sources, seed=args.seed,
                         threads=args.threads, od_scale_max=args.od_scale_max, eosin_drop=args.eosin_drop,
                         init_weights=args.init_weights)
    sidecar = train(args.consep, args.out, config, command="python -m preprocess.nuclei.learned_train " + " ".join(
        sys.argv[1:] if argv is None else argv))
    print(json.dumps(sidecar["validation"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
