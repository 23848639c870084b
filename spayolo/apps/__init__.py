"""The applications behind the ``spayolo`` command: live, prepare, evaluate, kfold, cam (and the demo video)."""

__all__ = ()
