"""Let ``optimizer=Adan`` work from the stock CLI by extending ``BaseTrainer.build_optimizer``."""

from __future__ import annotations

from .adan import Adan

__all__ = ("EXTRA_OPTIMIZERS", "install_optimizers")


def _adan(param_groups, lr, momentum):
    # Keep the stock grouping and per-group weight decay; only the update rule changes.
    groups = [{k: v for k, v in g.items() if k != "betas"} for g in param_groups]
    return Adan(groups, lr=lr)


EXTRA_OPTIMIZERS = {"adan": _adan}


def install_optimizers() -> None:
    """Wrap the trainer's optimizer factory once; stock names still go to the stock code unchanged."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils import LOGGER, colorstr

    stock = BaseTrainer.build_optimizer
    if getattr(stock, "spayolo", False):
        return

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        make = EXTRA_OPTIMIZERS.get(str(name).lower())
        if make is None:
            return stock(self, model, name, lr, momentum, decay, iterations)
        grouped = stock(self, model, "AdamW", lr, momentum, decay, iterations)  # stock decay/bias/norm groups
        optimizer = make(grouped.param_groups, lr, momentum)
        LOGGER.info(f"{colorstr('optimizer:')} {type(optimizer).__name__}(lr={lr}) with the stock parameter groups")
        return optimizer

    build_optimizer.spayolo = True
    BaseTrainer.build_optimizer = build_optimizer
