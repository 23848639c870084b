"""Fine-tuning across expression datasets: the pretrained classifier's rows follow the class names, not the indices."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("CLASS_SYNONYMS", "align_head", "canonical_class")

# the spellings the supported datasets use for one expression (CK+ and FER+ 'anger', FER2013 'angry', ...)
CLASS_SYNONYMS = {"anger": "angry", "happiness": "happy", "sadness": "sad", "surprised": "surprise",
                  "fearful": "fear", "disgusted": "disgust"}


def canonical_class(name: str) -> str:
    """One spelling per expression: 'Anger', 'anger' and 'angry' -> 'angry'."""
    name = str(name).strip().lower()
    return CLASS_SYNONYMS.get(name, name)


def _head_linear(model: nn.Module) -> nn.Linear | None:
    head = model.model[-1] if hasattr(model, "model") else None
    linear = getattr(head, "linear", None)
    return linear if isinstance(linear, nn.Linear) else None


def align_head(model: nn.Module, source: nn.Module, names: dict[int, str]) -> str | None:
    """Give each of ``names`` the final-layer row that ``source`` learnt for the same expression.

    Ultralytics keeps a pretrained head's rows in index order when the class count matches, so FER2013 -> CK+
    (angry, disgust, fear, happy, neutral, sad, surprise -> anger, contempt, disgust, fear, happy, sadness, surprise)
    would start 'contempt' from 'disgust', 'disgust' from 'fear' and so on. A class ``source`` lacks starts from zero
    weights and the mean bias: an even logit that still gets gradients. Returns what was matched, for the log, or
    None where nothing changes: same classes in the same order, no class in common, or a head without a final
    ``nn.Linear`` of that many outputs (a capsule head, say).
    """
    target, pretrained = _head_linear(model), _head_linear(source)
    source_labels = list(dict(getattr(source, "names", None) or {}).values())
    source_names = [canonical_class(n) for n in source_labels]
    target_names = [canonical_class(n) for n in names.values()]
    if (target is None or pretrained is None or target.out_features != len(target_names)
            or pretrained.out_features != len(source_names) or target.in_features != pretrained.in_features
            or source_names == target_names or not set(source_names) & set(target_names)):
        return None
    rows = {name: i for i, name in enumerate(source_names)}
    weight, bias = pretrained.weight.detach().float(), pretrained.bias.detach().float()
    with torch.no_grad():
        target.weight.zero_()
        target.bias.fill_(bias.mean().item())
        for i, name in enumerate(target_names):
            if name in rows:
                target.weight[i] = weight[rows[name]]
                target.bias[i] = bias[rows[name]]
    return ", ".join(f"{new} <- {source_labels[rows[key]]}" if key in rows else f"{new} (new)"
                     for new, key in zip(names.values(), target_names))
