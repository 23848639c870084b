"""The classification loss of spayolo's trainer: cross-entropy on hard or mixed labels, with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ("SmoothCrossEntropy",)


class SmoothCrossEntropy:
    """Cross-entropy with label smoothing (Szegedy et al., CVPR 2016, Sec. 7), Ultralytics' criterion interface.

    Uses ``batch["target"]`` (soft labels from MixUp/CutMix) when present, else the class indices ``batch["cls"]``;
    with ``smoothing=0`` and hard labels it equals the stock ``v8ClassificationLoss``.
    """

    def __init__(self, smoothing: float = 0.0):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label_smoothing={smoothing} must be in [0, 1)")
        self.smoothing = float(smoothing)

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = preds[1] if isinstance(preds, (list, tuple)) else preds
        loss = F.cross_entropy(logits, batch.get("target", batch["cls"]), label_smoothing=self.smoothing)
        return loss, {"loss": loss.detach()}
