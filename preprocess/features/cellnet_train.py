"""Train the ``cellnet`` CNN on CoNSeP, as the packaged weights were trained.

    python -m preprocess.features.cellnet_train --consep ../shared/data/consep_patches \\
        --out preprocess/features/weights/cellnet_consep.pt --epochs 16

The training cells are what an annotator is shown: the boxes the product's default segmenter
(:func:`preprocess.nuclei.learned.segment_nuclei_learned`) finds in CoNSeP's **train** images, rebuilt from
their crops (:mod:`preprocess.datasets.consep`). Each box takes the class of the ground-truth nucleus within
``match_um`` (3 um, the replay's rule), or ``not a nucleus`` when there is none, so the network also learns
what the segmenter's false positives look like. Patches are cut by the product's own
:func:`preprocess.features.featurize.extract_patches`. The **test** images are scored once at the end (their
accuracy goes into the sidecar); nothing is tuned on them. Four train images are held out and scored each epoch
for the history; the last epoch is kept (a one-cycle schedule ends at its best, and four images are too few to
pick an epoch by).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from adapters.atomic import write_atomic
from preprocess.datasets.consep import MPP, load_consep_split
from preprocess.features.cellnet import CellNet, CellNetSpec
from preprocess.features.featurize import cell_patch_px
from preprocess.features.pretrain import patches_from_image
from preprocess.nuclei.learned import segment_nuclei_learned

logger = logging.getLogger(__name__)

CLASSES = ("epithelial", "inflammatory", "other", "spindle", "not a nucleus")
VAL_IMAGES = 4


def label_detections(det_xy: np.ndarray, gt_xy: np.ndarray, gt_label: np.ndarray, max_dist_px: float) -> np.ndarray:
    """int64 (N,): the :data:`CLASSES` index of the ground-truth nucleus within ``max_dist_px`` of each detected
    centroid (float (N, 2)), else the index of ``not a nucleus``."""
    out = np.full(len(det_xy), CLASSES.index("not a nucleus"), np.int64)
    if len(det_xy) == 0 or len(gt_xy) == 0:
        return out
    dist, nearest = cKDTree(gt_xy).query(det_xy, distance_upper_bound=max_dist_px)
    hit = np.isfinite(dist)
    out[hit] = [CLASSES.index(str(gt_label[j])) for j in nearest[hit]]
    return out


def split_cells(consep: Path, split: str, spec: CellNetSpec, match_um: float = 3.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches uint8 (N, px, px, 3), labels int64 (N,) and source image index int64 (N,) of ``split``."""
    patches, labels, groups = [], [], []
    for g, (name, (image, nuclei, _)) in enumerate(load_consep_split(consep, split).items()):
        det = segment_nuclei_learned(image, MPP)
        labels.append(label_detections(det.centroids_xy, nuclei.xy, nuclei.label, match_um / MPP))
        patches.append(patches_from_image(image, det.centroids_xy, cell_patch_px(MPP, spec.patch_um), spec.input_px))
        groups.append(np.full(len(det), g))
        logger.info("%s %s: %d boxes", split, name, len(det))
    return np.concatenate(patches), np.concatenate(labels), np.concatenate(groups)


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip / 90-degree rotation of uint8 (B, px, px, 3) patches (the same for the batch)."""
    if rng.random() < 0.5:
        batch = batch[:, :, ::-1]
    if rng.random() < 0.5:
        batch = batch[:, ::-1]
    return np.ascontiguousarray(np.rot90(batch, int(rng.integers(4)), axes=(1, 2)))


def to_input(batch: np.ndarray, spec: CellNetSpec, rng: np.random.Generator | None = None) -> torch.Tensor:
    """float32 (B, 3, px, px) normalised; with ``rng``, each patch's channels get a random gain (0.85-1.15) and
    offset (sd 0.1 of the normalised scale): stain and scanner variation."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    if rng is not None:
        gain = torch.from_numpy(rng.uniform(0.85, 1.15, (len(batch), 3, 1, 1))).float()
        x = x * gain + torch.from_numpy(rng.normal(0.0, 0.1, (len(batch), 3, 1, 1))).float()
    return x


def predict(model: CellNet, patches: np.ndarray, spec: CellNetSpec) -> np.ndarray:
    """Predicted class index (N,) of each patch."""
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(to_input(patches[i : i + 1024], spec)).argmax(1).numpy()
                               for i in range(0, len(patches), 1024)] or [np.zeros(0, np.int64)])


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy and per-class recall / precision of ``pred`` against ``truth`` (int (N,))."""
    out = {"n": len(truth), "accuracy": round(float((pred == truth).mean()), 4)}
    for k, name in enumerate(CLASSES):
        out[name] = {"n": int((truth == k).sum()),
                     "recall": round(float((pred[truth == k] == k).mean()), 4) if (truth == k).any() else None,
                     "precision": round(float((truth[pred == k] == k).mean()), 4) if (pred == k).any() else None}
    return out


def train(consep: Path, epochs: int, width: int, embed_dim: int, patch_um: float, input_px: int, seed: int = 0,
          batch_size: int = 128) -> tuple[CellNet, CellNetSpec, dict]:
    """The trained network, its spec and a report (history, held-out and test scores)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    geometry = CellNetSpec(width, embed_dim, CLASSES, patch_um, input_px, (0.0,) * 3, (1.0,) * 3)
    patches, labels, groups = split_cells(consep, "train", geometry)
    held_out = np.isin(groups, rng.choice(groups.max() + 1, VAL_IMAGES, replace=False))
    fit = np.flatnonzero(~held_out)
    pixels = patches[fit].reshape(-1, 3) / 255.0
    spec = CellNetSpec(width, embed_dim, CLASSES, patch_um, input_px,
                       tuple(round(float(v), 5) for v in pixels.mean(0)), tuple(round(float(v), 5) for v in pixels.std(0)))
    model = CellNet(width, embed_dim, len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    steps = epochs * -(-len(fit) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    history = []
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        model.train()
        order = rng.permutation(fit)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(to_input(augment(patches[idx], rng), spec, rng)),
                                   torch.from_numpy(labels[idx]), label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        held = float((predict(model, patches[held_out], spec) == labels[held_out]).mean())
        history.append({"epoch": epoch + 1, "loss": round(total / len(fit), 4), "held_out_accuracy": round(held, 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        logger.info("epoch %d/%d: loss %.3f, held-out accuracy %.3f (%.0f s)", epoch + 1, epochs,
                    total / len(fit), held, time.perf_counter() - t0)
    test_patches, test_labels, _ = split_cells(consep, "test", spec)
    report = {"history": history, "train_boxes": len(fit), "held_out_boxes": int(held_out.sum()),
              "held_out": scores(predict(model, patches[held_out], spec), labels[held_out]),
              "test": scores(predict(model, test_patches, spec), test_labels)}
    return model.eval(), spec, report


def save(model: CellNet, spec: CellNetSpec, report: dict, out: Path, command: str) -> None:
    """``out`` (a float16 ``state_dict``) and its sidecar ``out.with_suffix('.json')``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, tmp)
    tmp.replace(out)
    sidecar = {**spec.sidecar(), "parameters": sum(p.numel() for p in model.parameters()), "command": command,
               "data": "CoNSeP train split (Graham et al. 2019), boxes of the packaged nucleus segmenter",
               "licence": "research / non-commercial use only (derived from CoNSeP); cite Graham et al. 2019",
               **report}
    payload = json.dumps(sidecar, indent=1).encode()
    write_atomic(out.with_suffix(".json"), lambda fh: fh.write(payload))
    out.with_suffix(".json").chmod(0o644)  # package data: readable by the service's user


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consep", type=Path, required=True, help="the consep_patches folder (images/, nuclei.csv, inst_maps_*.npz)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (its .json sidecar beside it)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--patch-um", type=float, default=20.0, help="side of each cell's patch, micrometres")
    parser.add_argument("--input-px", type=int, default=40, help="side the patch is resized to")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not (args.consep / "nuclei.csv").is_file():
        parser.error(f"--consep {args.consep} holds no nuclei.csv: give the consep_patches folder")
    torch.set_num_threads(args.threads)
    model, spec, report = train(args.consep, args.epochs, args.width, args.embed_dim, args.patch_um, args.input_px,
                                args.seed)
    command = "python -m preprocess.features.cellnet_train " + shlex.join(sys.argv[1:] if argv is None else argv)
    save(model, spec, report, args.out, command)
    logger.info("test accuracy %.3f on %d boxes; wrote %s", report["test"]["accuracy"], report["test"]["n"], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
