"""The registry, the parser, the Ultralytics integration, restricted loading and the import graph.

Covers what makes a bare ``pip install spayolo`` work with the stock API: the autoload .pth, every patch and the
Ultralytics internals it relies on, clear errors for bad model YAMLs, and registration in any import order.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, build_model, run_cli
from spayolo import registry
from spayolo.classifier import FAST_MODEL
from spayolo.parser import ModelConfigError

PACKAGE = REPO / "spayolo"
WEIGHTS = REPO / "weights" / f"{FAST_MODEL}.pt"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SPAYOLO_MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


# --- the import graph


def imports_of(path: Path, module_level: bool = True) -> set[str]:
    """The spayolo modules that ``path`` imports: at module level only, or everywhere (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and module_level:
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: package.count(".") + 2 - node.level]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    found = {m for m in found if m in SPAYOLO_MODULES}
    # importing a.b.c first executes a and a.b, unless they are this module's own packages (already executing)
    own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 2)}
    found.update(".".join(m.split(".")[:k]) for m in list(found) for k in range(1, m.count(".") + 1))
    return found - own


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_spayolo():
    graph = {name: imports_of(path) for path in PACKAGE.rglob("*.py") if (name := module_name(path)) in SPAYOLO_MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_core_modules_stand_on_their_own():
    """The registry and the paths import nothing from spayolo but its error types, which import nothing; the .pth's hook
    imports spayolo only when it fires."""
    assert imports_of(PACKAGE / "errors.py") == set()
    for name in ("registry", "paths", "compat", "_autoload"):
        assert imports_of(PACKAGE / f"{name}.py") <= {"spayolo.errors"}, name
    assert imports_of(PACKAGE / "_autoload.py", module_level=False) == {"spayolo.integration"}
    assert imports_of(PACKAGE / "__init__.py") == {"spayolo._autoload"}  # what the .pth runs: no torch at start-up


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


ORDER = textwrap.dedent(
    """
    import sys
    import {first}
    from ultralytics import YOLO
    import ultralytics.data.utils as data_utils, ultralytics.engine.trainer as trainer, ultralytics.nn.tasks as tasks
    assert tasks.parse_model.__module__ == "spayolo.parser" and not hasattr(tasks.parse_model.stock, "stock")
    assert trainer.BaseTrainer.build_optimizer.spayolo
    assert hasattr(data_utils.check_cls_dataset, "stock") and hasattr(trainer.check_cls_dataset, "stock")
    print("TASK", YOLO(sys.argv[1]).task)
    """
)
FAST_ORDERS = ("spayolo.nn",)  # the order that once left blocks refused; the others run as slow
ULTRALYTICS_FIRST = ("ultralytics", "ultralytics.nn.modules", "ultralytics.data.utils", "ultralytics.engine.model",
                     "ultralytics.engine.trainer", "ultralytics.engine.validator", "ultralytics.engine.exporter")


@pytest.mark.parametrize("first", [
    pytest.param(m, marks=[] if m in FAST_ORDERS else [pytest.mark.slow])
    for m in (*SPAYOLO_MODULES, *ULTRALYTICS_FIRST)
])
def test_any_import_order_registers_and_loads_safely(first, tmp_path):
    """A fresh interpreter imports one module first; spayolo is then registered once and the shipped weights load
    under ULTRALYTICS_SAFE_LOAD=1 (``import spayolo.nn`` first must not leave the blocks off the allow-list)."""
    result = run_cli([sys.executable, "-c", ORDER.format(first=first), str(WEIGHTS)], cwd=tmp_path,
                     env={"ULTRALYTICS_SAFE_LOAD": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TASK classify" in result.stdout


# --- the autoload .pth and registration


AUTOLOAD = textwrap.dedent(
    """
    import sys
    print("AUTOLOAD", "spayolo._autoload" in sys.modules, "spayolo.nn" in sys.modules, "torch" in sys.modules)
    from ultralytics import YOLO
    from ultralytics.nn.tasks import ClassificationModel, parse_model
    print("PARSER", parse_model.__module__)
    print("BLOCK", type(ClassificationModel("spayolo-s.yaml", nc=7, verbose=False).model[7]).__name__)
    print("TASK", YOLO(sys.argv[1]).task)
    """
)


def test_autoload_pth_registers_a_fresh_interpreter(tmp_path):
    """What the yolo CLI and Ultralytics' DDP children do: parse a spayolo YAML and load a checkpoint (restricted) in
    an interpreter that never imported spayolo. Only the installed spayolo-autoload.pth can have registered it, and it
    did so without importing torch at start-up."""
    result = run_cli([sys.executable, "-c", AUTOLOAD, str(WEIGHTS)], cwd=tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AUTOLOAD True False False" in result.stdout  # the .pth ran, cheaply
    assert "PARSER spayolo.parser" in result.stdout and "BLOCK SPAM" in result.stdout
    assert "TASK classify" in result.stdout


def test_autoload_can_be_switched_off(tmp_path):
    code = ("import ultralytics.nn.tasks as t; print('OFF', t.parse_model.__module__); import spayolo; "
            "spayolo.register(); import ultralytics.data.utils as u; print('ON', t.parse_model.__module__, "
            "hasattr(u.check_cls_dataset, 'stock'))")
    result = run_cli([sys.executable, "-c", code], cwd=tmp_path, env={"SPAYOLO_AUTOLOAD": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OFF ultralytics.nn.tasks" in result.stdout and "ON spayolo.parser True" in result.stdout


@pytest.mark.slow  # a fresh interpreter each: kept out of the quick run
def test_register_before_ultralytics_patches_once(tmp_path):
    code = ("import spayolo; spayolo.register(); import ultralytics.nn.tasks as t; "
            "print('TWICE', hasattr(t.parse_model.stock, 'stock'), hasattr(t.check_yaml.stock, 'stock'))")
    result = run_cli([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TWICE False False" in result.stdout


@pytest.mark.slow  # a fresh interpreter each: kept out of the quick run
def test_a_bug_in_spayolo_nn_is_not_swallowed(tmp_path):
    """An ImportError inside registration fails the import that triggered it, naming the cause: a broken block
    module must not leave Ultralytics running without spayolo's parser."""
    code = "import sys; sys.modules['spayolo.nn.wamf'] = None; import ultralytics.nn.tasks"
    result = run_cli([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode != 0
    assert "import of spayolo.nn.wamf halted" in result.stderr


UNSUPPORTED = textwrap.dedent(
    """
    import importlib.metadata as metadata, warnings
    real = metadata.version
    metadata.version = lambda name: "8.3.0" if name == "ultralytics" else real(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import ultralytics.nn.tasks as tasks
    print("PARSER", tasks.parse_model.__module__)
    print("WARNINGS", [str(w.message) for w in caught if "spayolo" in str(w.message)])
    """
)


@pytest.mark.slow  # a fresh interpreter each: kept out of the quick run
def test_unsupported_ultralytics_warns_once_saying_what_will_not_work(tmp_path):
    result = run_cli([sys.executable, "-c", UNSUPPORTED], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PARSER ultralytics.nn.tasks" in result.stdout  # stock Ultralytics stays usable
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("WARNINGS")]
    (message,) = ast.literal_eval(line[len("WARNINGS "):])
    assert "ultralytics>=8.4.190,<8.5" in message and "8.3.0" in message
    assert "spayolo-n.yaml" in message and "do not work" in message


def test_unsupported_version_message(monkeypatch):
    import spayolo.compat as compat

    monkeypatch.setattr(compat, "version", lambda name: "8.3.0")
    with pytest.raises(ImportError, match=r"ultralytics>=8\.4\.190,<8\.5.*8\.3\.0"):
        compat.check_ultralytics()


# --- restricted loading


def test_every_spayolo_layer_is_admitted_by_restricted_loading():
    """Each nn.Module class in spayolo.nn is registered (block or layer), so checkpoints holding it load safely."""
    import spayolo.nn

    allowed = set(torch.serialization.get_safe_globals())
    for name in [m for m in SPAYOLO_MODULES if m.startswith("spayolo.nn.")]:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == name:
                assert cls in registry.CHECKPOINT_CLASSES and cls in allowed, f"{name}.{cls.__name__} is not registered"
    assert set(spayolo.nn.__all__) >= {cls.__name__ for cls in registry.CHECKPOINT_CLASSES}


def test_safe_load_refuses_other_classes(tmp_path, monkeypatch):
    """The allow-list admits spayolo's classes and nothing else that Ultralytics would not admit."""
    (tmp_path / "foreign.py").write_text("import torch\nclass Sneaky(torch.nn.Identity):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "foreign", raising=False)
    foreign = importlib.import_module("foreign")
    model = build_model("spayolo-n.yaml")
    model.model[7] = foreign.Sneaky()
    ckpt = tmp_path / "foreign.pt"
    torch.save({"model": model, "train_args": {}}, ckpt)
    monkeypatch.delitem(sys.modules, "foreign")
    load = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from ultralytics import YOLO; YOLO({str(ckpt)!r})"
    result = run_cli([sys.executable, "-c", load], cwd=tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"})
    assert result.returncode != 0
    assert "foreign.Sneaky" in result.stderr


# --- the registry


def test_register_block_refuses_a_second_class_of_the_same_name(monkeypatch):
    monkeypatch.setattr(registry, "BLOCKS", {})
    monkeypatch.setattr(registry, "CHECKPOINT_CLASSES", set())

    def make():
        class Twin(torch.nn.Identity):
            pass

        return Twin

    registry.register_block("same")(make())
    with pytest.raises(ValueError, match="'Twin' is registered twice"):
        registry.register_block("same")(make())
    with pytest.raises(ValueError, match="Twin: channels must be"):
        registry.BlockSpec(make(), channels="wide")


def test_scale_rules_match_ultralytics():
    assert [registry.scale_width(c, 0.25, 1024) for c in (64, 100, 2048)] == [16, 32, 256]
    assert registry.scale_width(66, 1.0, float("inf"), divisor=1) == 66
    assert [registry.scale_depth(n, 0.33) for n in (1, 3, 6)] == [1, 1, 2]


# --- Ultralytics internals spayolo relies on (spayolo.integration lists them); a failure here means the supported
# range must not widen


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


def test_imgsz_checks_are_looked_up_by_name_where_spayolo_swaps_them():
    import ultralytics.engine.predictor as predictor
    import ultralytics.engine.trainer as trainer
    import ultralytics.engine.validator as validator

    for module, functions in ((trainer, [trainer.BaseTrainer._setup_train]),
                              (validator, [validator.BaseValidator.__init__, validator.BaseValidator.__call__]),
                              (predictor, [predictor.BasePredictor.setup_source])):
        assert "check_imgsz" in vars(module), module.__name__
        for function in functions:
            assert "check_imgsz(" in inspect.getsource(function)
            assert inspect.unwrap(function).__globals__ is vars(module)


def test_every_patch_is_in_place():
    import ultralytics.data.utils
    import ultralytics.engine.exporter
    import ultralytics.engine.model as engine_model
    import ultralytics.engine.trainer
    import ultralytics.engine.validator
    from ultralytics.nn import tasks

    for name in ("parse_model", "check_yaml", "guess_model_scale", "guess_model_task"):
        assert getattr(tasks, name).__module__.startswith("spayolo."), name
    assert engine_model.guess_model_task is tasks.guess_model_task
    from ultralytics import YOLO

    assert {role: cls.__name__ for role, cls in YOLO("yolov8n-cls.yaml").task_map["classify"].items()
            if role != "model"} == {"trainer": "FERTrainer", "validator": "FERValidator", "predictor": "FERPredictor"}
    assert ultralytics.engine.trainer.BaseTrainer.build_optimizer.spayolo
    for name in ("ultralytics.data.utils", "ultralytics.engine.trainer", "ultralytics.engine.validator",
                 "ultralytics.engine.exporter"):
        assert sys.modules[name].check_cls_dataset.__module__ == "spayolo.integration", name


# --- bad model YAMLs: the message names the file, the layer index and the module


def write_model(tmp_path, replace: dict[int, list]) -> str:
    d = yaml.safe_load((REPO / "cfg" / "models" / "spayolo.yaml").read_text())
    for i, row in replace.items():
        d["backbone"][i] = row
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def build(path):
    from ultralytics.nn.tasks import ClassificationModel

    return ClassificationModel(path, nc=7, verbose=False)


def test_unknown_module_names_file_layer_and_module(tmp_path):
    path = write_model(tmp_path, {7: [-1, 1, "SPAMM", []]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 7: unknown module 'SPAMM'.*SPAM"):
        build(path)


def test_wrong_block_arguments(tmp_path):
    path = write_model(tmp_path, {7: [-1, 1, "SPAM", ["gate", True, True, "extra"]]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 7 \(SPAM\): cannot build SPAM\(c1"):
        build(path)


def test_wrong_stock_arguments(tmp_path):
    path = write_model(tmp_path, {5: [-1, 1, "Conv", [512, 3, 2, None, 1, 1, True, "bad", "args"]]})
    with pytest.raises(ModelConfigError, match=r"broken\.yaml: layer 5 \(Conv\)"):
        build(path)


def test_from_index_out_of_range(tmp_path):
    path = write_model(tmp_path, {7: [12, 1, "SPAM", []]})
    with pytest.raises(ModelConfigError, match=r"layer 7 \(SPAM\): 'from' 12 points at no earlier layer"):
        build(path)


def test_a_bug_inside_a_block_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the YAML's part becomes a ModelConfigError: a TypeError raised inside a block's constructor is a bug in
    the block, not a YAML that names the wrong arguments."""
    from spayolo.nn.spam import SPAM

    class BuggySPAM(SPAM):
        def __init__(self, c1, c2, attention="gate", frequency=True, multiscale=True):
            self.width = c1 + None  # the bug

    monkeypatch.setitem(registry.BLOCKS, "SPAM", registry.BlockSpec(BuggySPAM, "same"))
    with pytest.raises(TypeError, match="unsupported operand") as error:
        build(write_model(tmp_path, {7: [-1, 1, "SPAM", []]}))
    assert not isinstance(error.value, ModelConfigError)
    with pytest.raises(ModelConfigError, match=r"layer 7 \(BuggySPAM\): cannot build BuggySPAM\(c1"):  # still named
        build(write_model(tmp_path, {7: [-1, 1, "SPAM", ["gate", True, True, "extra"]]}))


def test_wrong_channel_count_is_named(tmp_path):
    """SPAM fed two inputs of different widths cannot keep its width: the error names layer, block and widths."""
    path = write_model(tmp_path, {7: [[-1, 4], 1, "SPAM", []]})
    message = r"broken\.yaml: layer 7 \(SPAM\): cannot build SPAM.*\[\[512, 256\], 512\]"
    with pytest.raises(ModelConfigError, match=message):
        build(path)


def test_unknown_scale(tmp_path):
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml.safe_load((REPO / "cfg" / "models" / "spayolo.yaml").read_text())
    d["scale"] = "q"
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(d))
    cfg = yaml_model_load(path)
    cfg["scale"] = "q"
    with pytest.raises(ModelConfigError, match=r"scaled\.yaml: scale 'q' is not one of its scales"):
        build(cfg)


def test_stock_yolo_yaml_unchanged(monkeypatch):
    """A YAML without spayolo blocks goes to the stock parser: same layers, same parameter count, same model."""
    from ultralytics.nn import tasks
    from ultralytics.nn.tasks import ClassificationModel, parse_model, yaml_model_load

    d = yaml_model_load("yolov8n-cls.yaml")
    ours, _ = parse_model(dict(d), 3, verbose=False)
    stock, _ = parse_model.stock(dict(yaml_model_load("yolov8n-cls.yaml")), 3, verbose=False)
    assert [type(m) for m in ours] == [type(m) for m in stock]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stock.parameters())
    model = ClassificationModel("yolov8n-cls.yaml", nc=7, verbose=False)  # through spayolo's parser
    monkeypatch.setattr(tasks, "parse_model", parse_model.stock)
    stock_model = ClassificationModel("yolov8n-cls.yaml", nc=7, verbose=False)
    assert [m.type for m in model.model] == [m.type for m in stock_model.model] and model.save == stock_model.save
    stock_model.load_state_dict(model.state_dict())  # strict: every tensor's name and shape alike
