"""Out-of-focus tissue (preprocess/nuclei/focus.py): where the threshold sits, and what preprocessing leaves out.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_focus.py [--data ../shared/data] [--replay-images DIR]

1. **Calibration.** Every judged 50 um block of in-focus images (CoNSeP test patches at 0.25 um/px, or the 14
   stitched test images of ``bench/bench_replay.py``'s cache when ``--replay-images`` names them; the CMU demo
   slide at 0.499; the Ki-67 IHC tiles at 0.25; the bundled H&E images at 0.5 assumed), then the CoNSeP and
   CMU images blurred by a Gaussian of 1, 1.5, 2 and 3 um: the highest in-focus score, and the share of
   blurred blocks above the threshold.
2. **Preprocessing.** The CMU slide with its lower half blurred by 2 um, segmented as ``hali preprocess`` does
   (its windows, the default segmenter, with and without the check): nuclei kept in each half and seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.nuclei.focus import DEFAULT_MAX_BLUR, blur_scores, focus_checked

ROOT = Path(__file__).resolve().parents[1]


def blurred(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.stack([ndi.gaussian_filter(rgb[..., c].astype(np.float32), sigma_px) for c in range(3)], -1) \
        .round().astype(np.uint8)


def judged(images: list[tuple[np.ndarray, float]]) -> np.ndarray:
    scores = [blur_scores(rgb, mpp)[0] for rgb, mpp in images]
    return np.concatenate([s[~np.isnan(s)] for s in scores]) if scores else np.zeros(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--replay-images", type=Path, default=ROOT / ".state" / "replay-cache" / "images")
    p.add_argument("--threshold", type=float, default=DEFAULT_MAX_BLUR)
    args = p.parse_args()
    if not args.data.is_dir():
        p.error(f"{args.data} is not a folder: pass --data ../shared/data (real slides and CoNSeP)")
    from adapters.slide_reader import OpenSlideReader

    def rgb(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    stitched = sorted(args.replay_images.glob("test_*.tif")) if args.replay_images.is_dir() else []
    consep = [(rgb(f), 0.25) for f in stitched] or \
        [(rgb(f), 0.25) for f in sorted((args.data / "consep_patches" / "images").glob("test_*"))]
    cmu_path = args.data / "wsi" / "CMU-1-Small-Region.svs"
    with OpenSlideReader(cmu_path) as reader:
        cmu = reader.read_region(0, 0, *reader.dimensions)
        cmu_mpp = reader.require_mpp()
    sets = {
        f"CoNSeP test ({'14 stitched images' if stitched else f'{len(consep)} patches'}, 0.25 um/px)": consep,
        "CMU-1-Small-Region (0.499 um/px)": [(cmu, cmu_mpp)],
        "Ki-67 IHC tiles (0.25 assumed)": [(rgb(f), 0.25) for f in sorted((args.data / "deepliif_ki67_samples" / "ihc").glob("*.png"))],
        "bundled H&E / IHC images (0.5 assumed)": [(rgb(f), 0.5) for f in sorted((args.data / "misc_images").glob("*.*"))
                                                   if f.suffix.lower() in (".png", ".jpg")],
    }
    print(f"threshold {args.threshold}\n\n| in-focus images | blocks judged | median | highest | above threshold |")
    print("|---|---:|---:|---:|---:|")
    for name, images in sets.items():
        v = judged(images)
        if len(v):
            print(f"| {name} | {len(v)} | {np.median(v):.3f} | {v.max():.3f} | {np.mean(v > args.threshold):.1%} |")
    print("\n| CoNSeP test + CMU blurred by | blocks judged | median | above threshold |\n|---|---:|---:|---:|")
    for sigma_um in (1.0, 1.5, 2.0, 3.0):
        v = judged([(blurred(x, sigma_um / mpp), mpp) for x, mpp in consep + [(cmu, cmu_mpp)]])
        print(f"| {sigma_um} um | {len(v)} | {np.median(v):.3f} | {np.mean(v > args.threshold):.1%} |", flush=True)

    from preprocess.nuclei.learned import segment_nuclei_learned
    from preprocess.nuclei.segment import segment_windows, tissue_windows
    from preprocess.nuclei.tissue import detect_tissue

    half = cmu.shape[0] // 2
    scene = cmu.copy()
    scene[half:] = blurred(cmu, 2.0 / cmu_mpp)[half:]
    path = ROOT / ".state" / "bench-focus-cmu-half-blurred.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene).save(path)
    print("\n| CMU, lower half blurred by 2 um | nuclei, sharp half | nuclei, blurred half | segmentation s |")
    print("|---|---:|---:|---:|")
    with OpenSlideReader(path, mpp=cmu_mpp) as reader:
        thumb, down = reader.thumbnail(2048)
        mask = detect_tissue(thumb)
        windows = list(tissue_windows(mask, down, reader.dimensions, 2048))
        for name, segment in (("without the check", segment_nuclei_learned),
                              (f"with the check (max blur {args.threshold})", focus_checked(segment_nuclei_learned, args.threshold))):
            t0 = time.perf_counter()
            nuclei = segment_windows(reader, windows, mask, down, segment=segment)
            y = nuclei.centroids_xy[:, 1]
            print(f"| {name} | {(y < half).sum()} | {(y >= half).sum()} | {time.perf_counter() - t0:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
