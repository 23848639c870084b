"""The Ultralytics internals spayolo relies on; a failure here means the supported range must not widen."""

from __future__ import annotations

import inspect

import pytest


def test_parse_model_signature_and_lookup():
    from ultralytics.nn import tasks

    stock = tasks.parse_model.stock
    assert list(inspect.signature(stock).parameters) == ["d", "ch", "verbose"]
    source = inspect.getsource(stock)
    assert "globals()[m]" in source  # names resolve in tasks' namespace
    assert 'locals()[a] if a in locals()' in source  # "ch" in a probe row resolves to the live channel list


def test_yaml_helpers_are_looked_up_at_call_time():
    from ultralytics.nn import tasks

    source = inspect.getsource(tasks.yaml_model_load)
    assert "check_yaml(" in source and "guess_model_scale(path)" in source
    assert tasks.yaml_model_load.__globals__ is vars(tasks)


def test_trainer_and_safe_load_hooks_exist():
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import _SafeLoad

    assert list(inspect.signature(BaseTrainer.build_optimizer).parameters)[:7] == [
        "self", "model", "name", "lr", "momentum", "decay", "iterations"]
    assert callable(_SafeLoad.activation) and hasattr(_SafeLoad, "loading")


def test_registration_is_installed_without_import():
    import ultralytics.nn.tasks as tasks

    assert tasks.parse_model.__module__ == "spayolo.registry"


def test_unsupported_version_message(monkeypatch):
    import spayolo.compat as compat

    monkeypatch.setattr(compat, "version", lambda name: "8.3.0")
    with pytest.raises(ImportError, match=r"ultralytics>=8\.4\.190,<8\.5.*8\.3\.0"):
        compat.check_ultralytics()
