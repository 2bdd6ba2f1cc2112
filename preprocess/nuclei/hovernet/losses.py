"""HoVer-Net's loss (Graham et al. 2019, section 3.3): L = a La + b Lb + c Lc + d Ld + e Le + f Lf.

- NP branch: cross-entropy (Lc) + Dice (Ld) of the nucleus/background softmax;
- HV branch: mean squared error of the maps (La) + the mean squared error of their Sobel gradients on
  nuclear pixels only (Lb, "MSGE": the horizontal map differentiated along columns, the vertical one
  along rows), which makes the maps ramp sharply across touching nuclei;
- TP branch (when there are types): cross-entropy (Le) + Dice (Lf).

Weights as in the paper: all 1 except the MSGE's, 2. All tensors are (N, C, rows, cols) at the model's
output; targets ``np`` and ``tp`` are int64 (N, rows, cols) class indices, ``hv`` float (N, 2, rows, cols).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

LOSS_WEIGHTS = {"np_ce": 1.0, "np_dice": 1.0, "hv_mse": 1.0, "hv_msge": 2.0, "tp_ce": 1.0, "tp_dice": 1.0}
SOBEL_KSIZE = 5  # the reference code's gradient kernel for the MSGE
_DICE_SMOOTH = 1e-3


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over classes of 1 - soft Dice between softmax(``logits``) (N, K, H, W) and one-hot ``target``
    (N, H, W); a class absent from both scores 0, so a perfect prediction gives 0."""
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return (1.0 - (2.0 * inter + _DICE_SMOOTH) / (total + _DICE_SMOOTH)).sum()


def sobel_kernels(ksize: int = SOBEL_KSIZE, device: torch.device | None = None) -> torch.Tensor:
    """float32 (2, 1, k, k): kernel 0 differentiates along columns (x), kernel 1 along rows (y), each
    ``offset / (dx^2 + dy^2)`` as in the reference code; positive on a rising signal."""
    r = torch.arange(-(ksize // 2), ksize // 2 + 1, dtype=torch.float32, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    norm = dx * dx + dy * dy + 1e-15
    return torch.stack([dx / norm, dy / norm])[:, None]


def hv_gradients(hv: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W): d(horizontal)/dx and d(vertical)/dy of ``hv`` (N, 2, H, W), zero-padded "same" size."""
    return F.conv2d(hv, sobel_kernels(device=hv.device).to(hv.dtype), padding=SOBEL_KSIZE // 2, groups=2)


def msge_loss(pred_hv: torch.Tensor, true_hv: torch.Tensor, nuclear: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the HV gradients over nuclear pixels (``nuclear`` (N, H, W), 0/1); 0
    when there is none."""
    focus = nuclear[:, None].to(pred_hv.dtype).expand_as(pred_hv)
    diff = hv_gradients(pred_hv) - hv_gradients(true_hv)
    return (focus * diff * diff).sum() / (focus.sum() + 1e-8)


def hovernet_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                  weights: Mapping[str, float] = LOSS_WEIGHTS) -> tuple[torch.Tensor, dict[str, float]]:
    """(weighted total, each unweighted term as a float) of model ``outputs`` ({"np", "hv", "tp"?}) against
    ``targets`` ({"np", "hv", "tp"?}, as in the module docstring). The TP terms appear when both have "tp"."""
    terms = {
        "np_ce": F.cross_entropy(outputs["np"], targets["np"]),
        "np_dice": dice_loss(outputs["np"], targets["np"]),
        "hv_mse": F.mse_loss(outputs["hv"], targets["hv"]),
        "hv_msge": msge_loss(outputs["hv"], targets["hv"], targets["np"]),
    }
    if "tp" in outputs and targets.get("tp") is not None:
        terms["tp_ce"] = F.cross_entropy(outputs["tp"], targets["tp"])
        terms["tp_dice"] = dice_loss(outputs["tp"], targets["tp"])
    total = sum(weights[name] * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
