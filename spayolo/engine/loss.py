"""The classification losses of spayolo's trainer: cross-entropy on hard or mixed labels, with label smoothing, and
knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spayolo.errors import UsageError

__all__ = ("DistillationLoss", "SmoothCrossEntropy")


def _logits(preds) -> torch.Tensor:
    return preds[1] if isinstance(preds, (list, tuple)) else preds  # a Classify head in eval gives (probs, logits)


class SmoothCrossEntropy:
    """Cross-entropy with label smoothing (Szegedy et al., CVPR 2016, Sec. 7), Ultralytics' criterion interface.

    Uses ``batch["target"]`` (soft labels from MixUp/CutMix) when present, else the class indices ``batch["cls"]``;
    with ``smoothing=0`` and hard labels it equals the stock ``v8ClassificationLoss``.
    """

    def __init__(self, smoothing: float = 0.0):
        if not 0.0 <= smoothing < 1.0:
            raise UsageError(f"label_smoothing={smoothing} must be in [0, 1)")
        self.smoothing = float(smoothing)

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.cross_entropy(_logits(preds), batch.get("target", batch["cls"]), label_smoothing=self.smoothing)
        return loss, {"loss": loss.detach()}


class DistillationLoss(SmoothCrossEntropy):
    """Knowledge distillation, Hinton et al. (2015), Sec. 2: ``(1 - w) CE(labels) + w T^2 KL(teacher_T || student_T)``.

    ``w`` is ``weight``, ``student_T = softmax(logits / T)``; ``batch["teacher"]`` holds the teacher's probabilities
    already softened at temperature ``T`` (and mixed like the images when MixUp/CutMix ran); batches without it
    (validation) get the label term alone, so the validation loss stays comparable with an undistilled run.
    """

    def __init__(self, smoothing: float = 0.0, weight: float = 0.5, temperature: float = 1.0):
        super().__init__(smoothing)
        if not 0.0 <= weight <= 1.0:
            raise UsageError(f"distill_weight={weight} must be in [0, 1]")
        if temperature <= 0:
            raise UsageError(f"distill_temp={temperature} must be > 0")
        self.weight, self.temperature = float(weight), float(temperature)

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        label_loss, _ = super().__call__(preds, batch)
        if "teacher" not in batch:
            return label_loss, {"loss": label_loss.detach()}
        student = (_logits(preds).float() / self.temperature).log_softmax(1)
        kd = F.kl_div(student, batch["teacher"], reduction="batchmean") * self.temperature**2
        loss = (1 - self.weight) * label_loss + self.weight * kd
        return loss, {"loss": loss.detach()}
