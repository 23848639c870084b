"""A classifier's input size rule, and the stock classification validator and predictor under it."""

from __future__ import annotations

from contextlib import contextmanager

import ultralytics.engine.predictor as base_predictor
import ultralytics.engine.validator as base_validator
from ultralytics.models.yolo.classify import ClassificationPredictor, ClassificationValidator
from ultralytics.utils.checks import check_imgsz

__all__ = ("CLASSIFIER_STRIDE", "FERPredictor", "FERValidator", "classifier_imgsz", "classifier_imgsz_rule")

# Ultralytics rounds every imgsz up to a multiple of 32, the detection grid. A classifier pools globally, so only the
# P5 map (stride 32) must keep a pixel; multiples of 16 halve evenly down to P4, where SPAM attends, and admit
# FER2013's native 48 px, which the stock rule turns into 64.
CLASSIFIER_STRIDE = 16


def classifier_imgsz(imgsz, stride=None, min_dim=1, max_dim=2, floor=0):
    """Ultralytics' ``check_imgsz`` with a classifier's rule: multiples of 16, at least 32, whatever grid is passed."""
    return check_imgsz(imgsz, stride=CLASSIFIER_STRIDE, min_dim=min_dim, max_dim=max_dim, floor=max(floor, 32))


@contextmanager
def classifier_imgsz_rule(module):
    """Within the block, ``module.check_imgsz`` (the engine modules import it by name) is :func:`classifier_imgsz`."""
    stock = module.check_imgsz
    module.check_imgsz = classifier_imgsz
    try:
        yield
    finally:
        module.check_imgsz = stock


class FERValidator(ClassificationValidator):
    """The stock classification validator under :func:`classifier_imgsz`: ``imgsz=48`` validates at 48, not 64."""

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None):
        with classifier_imgsz_rule(base_validator):
            super().__init__(dataloader, save_dir, args, _callbacks)

    def __call__(self, trainer=None, model=None, **kwargs):
        with classifier_imgsz_rule(base_validator):
            return super().__call__(trainer, model, **kwargs)


class FERPredictor(ClassificationPredictor):
    """The stock classification predictor under :func:`classifier_imgsz`: ``imgsz=48`` predicts at 48, not 64."""

    def setup_source(self, source):
        with classifier_imgsz_rule(base_predictor):
            super().setup_source(source)
