"""The 2x32 fully connected head network (HALI, van der Wal et al. 2021), apart from its training and its
scikit-learn wrapper (:mod:`ml_backend.model.head`), so both import it without a loop::

    x (d) -> FC(d, 32) -> ReLU -> FC(32, 32) -> ReLU -> FC(32, K) -> logits (K)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_UNITS = 32


class HeadNet(nn.Module):
    """The 2x32 FC head, with the feature standardisation stored as buffers ``mean`` and ``scale``.

    ``forward`` takes raw features (B, d) float32 and returns logits (B, K) float32.
    """

    def __init__(self, n_features: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        # skip_init: the weights are drawn from a local generator in reset_parameters, so building the
        # module must not consume the global RNG.
        self.fc1 = nn.utils.skip_init(nn.Linear, n_features, HIDDEN_UNITS)
        self.fc2 = nn.utils.skip_init(nn.Linear, HIDDEN_UNITS, HIDDEN_UNITS)
        self.out = nn.utils.skip_init(nn.Linear, HIDDEN_UNITS, n_classes)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.dropout = dropout

    def reset_parameters(self, generator: torch.Generator) -> None:
        """torch's default ``nn.Linear`` init (uniform in +-1/sqrt(fan_in)), drawn from ``generator``."""
        with torch.no_grad():
            for layer in (self.fc1, self.fc2, self.out):
                bound = layer.in_features**-0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features (B, d) -> standardised features (B, d)."""
        return (x - self.mean) / self.scale

    def hidden(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standardised features (B, d) -> penultimate features (B, 32), after the second ReLU.

        Dropout (rate ``self.dropout``) is applied after each ReLU only when a ``generator`` is given,
        so that training stays deterministic and inference stays exact.
        """
        h = _dropout(F.relu(self.fc1(z)), self.dropout, generator)
        return _dropout(F.relu(self.fc2(h)), self.dropout, generator)

    def logits(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standardised features (B, d) -> logits (B, K)."""
        return self.out(self.hidden(z, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.standardize(x))


def _dropout(h: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with a local generator (``F.dropout`` only draws from the global RNG)."""
    if generator is None or p == 0.0:
        return h
    keep = torch.rand(h.shape, generator=generator) >= p
    return h * keep / (1.0 - p)
