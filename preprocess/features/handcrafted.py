"""Handcrafted cell measurements that need no weights: uint8 RGB patches -> float32 (N, 46) features.

The measurements QuPath users classify cells with, taken on a patch centred on each nucleus:

- the nucleus: a mask from the patch's nuclear stain (the larger of haematoxylin and a scaled DAB optical
  density, thresholded with Otsu), the connected component under the centre (or the nearest one within
  :data:`CENTRE_SEARCH_UM`), holes filled; or a mask the caller passes when it has a label map;
- stain intensities from colour deconvolution (``skimage.color.rgb2hed``): mean, std and max of
  haematoxylin, eosin and DAB over the nucleus and over a ring of cytoplasm :data:`RING_UM` wide around it;
- size and shape in micrometres: area, perimeter, major and minor axis, eccentricity, solidity, circularity;
- texture: Haralick/GLCM contrast, dissimilarity, homogeneity, energy and correlation of the haematoxylin
  channel over the patch, at 1 and 2 pixels, averaged over four directions;
- colour: mean RGB of the nucleus and of the patch, mean optical density, and how much of the patch is
  nuclear (the crowding that tells lymphocyte clusters from stroma).

Every value is a deterministic function of the patch; the head standardises features, so their units differ.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

STAINS = ("hematoxylin", "eosin", "dab")
RING_UM = 2.0  # cytoplasm ring width around the nucleus
CENTRE_SEARCH_UM = 3.0  # a nucleus whose mask misses the centre pixel may still be this close
FALLBACK_RADIUS_UM = 2.0  # intensities are taken over a central disc this wide when no nucleus is found
SMOOTH_SIGMA_PX = 0.7
DAB_WEIGHT = 0.3  # as in preprocess.nuclei.segment: brown nuclei count as nuclear without dominating Otsu
MIN_NUCLEAR_OD = 0.03  # below this optical density nothing is nuclear (blank or pale patches)
GLCM_LEVELS = 16
GLCM_MAX_OD = 0.15  # haematoxylin OD mapped to the top grey level; a fixed scale keeps patches comparable
GLCM_DISTANCES_PX = (1, 2)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")


def feature_names() -> list[str]:
    """Names of the columns :meth:`HandcraftedFeaturizer.embed` returns, in order."""
    names = [f"{region}_{stain}_{stat}" for region in ("nucleus", "ring") for stain in STAINS
             for stat in ("mean", "std", "max")]
    names += ["found", "area_um2", "perimeter_um", "major_axis_um", "minor_axis_um", "eccentricity", "solidity",
              "circularity"]
    names += [f"glcm_{prop}_d{d}" for d in GLCM_DISTANCES_PX for prop in GLCM_PROPS]
    names += ["nucleus_r", "nucleus_g", "nucleus_b", "patch_r", "patch_g", "patch_b", "nucleus_od", "patch_od",
              "patch_hematoxylin_mean", "patch_nuclear_fraction"]
    return names


class HandcraftedFeaturizer:
    """Stain, shape, texture and colour measurements of the nucleus at the centre of each patch.

    ``patch_um``: side of each patch in micrometres (the pipeline's ``patch_um``), which converts pixel
    sizes to micrometres whatever the patch's pixel size.
    """

    dim = len(feature_names())
    name = "handcrafted"
    patch_out_px = 40  # the side patches are cut to

    def __init__(self, patch_um: float = 20.0) -> None:
        if patch_um <= 0:
            raise ValueError(f"patch_um {patch_um} must be > 0")
        self.patch_um = patch_um

    def embed(self, patches: np.ndarray, nucleus_masks: np.ndarray | None = None) -> np.ndarray:
        """Features of uint8 (N, H, W, 3) RGB patches: float32 (N, :attr:`dim`).

        ``nucleus_masks``: optional bool (N, H, W), the nucleus of each patch (from a label map); without
        it the nucleus is segmented from the patch.
        """
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
            raise ValueError(f"patches must be uint8 (N, H, W, 3) RGB, got {patches.dtype} {patches.shape}")
        if nucleus_masks is not None and np.shape(nucleus_masks) != patches.shape[:3]:
            raise ValueError(f"nucleus_masks must be bool {patches.shape[:3]}, got {np.shape(nucleus_masks)}")
        um_per_px = self.patch_um / patches.shape[2]
        out = np.empty((len(patches), self.dim), np.float32)
        for i, patch in enumerate(patches):
            mask = None if nucleus_masks is None else np.asarray(nucleus_masks[i], bool)
            out[i] = _measure_patch(patch, um_per_px, mask)
        return out


def _measure_patch(rgb: np.ndarray, um_per_px: float, mask: np.ndarray | None) -> np.ndarray:
    """One patch (H, W, 3) uint8 -> its feature vector float64 (dim,)."""
    hed = np.clip(rgb2hed(rgb.astype(np.float32) / 255.0), 0.0, None)
    nuclear = ndi.gaussian_filter(np.maximum(hed[..., 0], DAB_WEIGHT * hed[..., 2]), SMOOTH_SIGMA_PX)
    foreground = _foreground(nuclear)
    found = True
    if mask is None:
        mask = _centre_component(foreground, CENTRE_SEARCH_UM / um_per_px)
    if not mask.any():
        found = False
        mask = _centre_disc(rgb.shape[:2], FALLBACK_RADIUS_UM / um_per_px)
    ring = _ring(mask, RING_UM / um_per_px)
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).mean(axis=2)
    return np.concatenate([
        _stain_stats(hed, mask), _stain_stats(hed, ring),
        [float(found)], _shape(mask, um_per_px) if found else np.zeros(7),
        _texture(hed[..., 0]),
        rgb[mask].mean(axis=0) / 255.0, rgb.reshape(-1, 3).mean(axis=0) / 255.0,
        [od[mask].mean(), od.mean(), hed[..., 0].mean(), foreground.mean()],
    ])


def _foreground(nuclear: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels above Otsu's threshold of the patch's nuclear density (and the OD floor)."""
    if nuclear.max() - nuclear.min() < 1e-6:
        return np.zeros(nuclear.shape, bool)
    return nuclear > max(threshold_otsu(nuclear), MIN_NUCLEAR_OD)


def _centre_component(foreground: np.ndarray, search_px: float) -> np.ndarray:
    """bool (H, W): the foreground component under the patch centre, else the nearest within ``search_px``."""
    labels, n = ndi.label(foreground)
    if n == 0:
        return foreground
    rows, cols = foreground.shape
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    yy, xx = np.nonzero(labels)
    dist = np.hypot(yy - cy, xx - cx)
    nearest = int(np.argmin(dist))
    if dist[nearest] > search_px + 0.5:
        return np.zeros_like(foreground)
    return ndi.binary_fill_holes(labels == labels[yy[nearest], xx[nearest]])


def _centre_disc(shape: tuple[int, int], radius_px: float) -> np.ndarray:
    rows, cols = shape
    yy, xx = np.ogrid[:rows, :cols]
    return np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2) <= max(radius_px, 1.0)


def _ring(mask: np.ndarray, width_px: float) -> np.ndarray:
    """bool (H, W): pixels outside ``mask`` within ``width_px`` of it; the mask itself if that is empty."""
    ring = ~mask & (ndi.distance_transform_edt(~mask) <= width_px)
    return ring if ring.any() else mask


def _stain_stats(hed: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean, std and max of each stain over ``region``: float (9,) ordered stain by stain."""
    values = hed[region]
    return np.stack([values.mean(axis=0), values.std(axis=0), values.max(axis=0)], axis=1).reshape(-1)


def _shape(mask: np.ndarray, um_per_px: float) -> np.ndarray:
    """Area (um^2), perimeter, major and minor axis (um), eccentricity, solidity, circularity of ``mask``."""
    props = regionprops(mask.astype(np.uint8))[0]
    perimeter_px = max(props.perimeter, 1.0)
    circularity = min(4 * np.pi * props.area / perimeter_px**2, 1.0)
    return np.array([props.area * um_per_px**2, props.perimeter * um_per_px, props.axis_major_length * um_per_px,
                     props.axis_minor_length * um_per_px, props.eccentricity, props.solidity, circularity])


def _texture(hematoxylin: np.ndarray) -> np.ndarray:
    """GLCM properties of the haematoxylin channel: float (len(GLCM_PROPS) x len(GLCM_DISTANCES_PX),)."""
    levels = np.clip(hematoxylin / GLCM_MAX_OD * (GLCM_LEVELS - 1) + 0.5, 0, GLCM_LEVELS - 1).astype(np.uint8)
    glcm = graycomatrix(levels, GLCM_DISTANCES_PX, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    # A flat patch has an undefined correlation (0/0); skimage returns 1 for it, and so do we.
    return np.concatenate([graycoprops(glcm, prop).mean(axis=1) for prop in GLCM_PROPS]).reshape(
        len(GLCM_PROPS), -1).T.reshape(-1)
