"""Several classifiers as one ONNX graph: one input per input size, the members' probabilities averaged.

A deployment then runs one ONNX Runtime session for an ensemble: ``spayolo export-ensemble a.pt b.onnx --out e.onnx``,
and ``FERPipeline(model="e.onnx")`` feeds each input the crops at its size. Members are .pt checkpoints (exported here
with a dynamic batch) or .onnx files with a dynamic batch (``yolo export ... dynamic=True``); each keeps its own input
size, and members of one size share their input.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ("export_ensemble", "member_graph")

OPSET = 17  # of .pt members exported here; the ensemble takes the newest opset among its members


def _onnx_member(path: Path):
    """A member .onnx: its graph, input size and class names; refused unless it has a dynamic batch."""
    import ast

    import onnx

    from spayolo.classifier import names_list
    from spayolo.errors import CheckpointError

    model = onnx.load(str(path))
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    if dims[0].dim_value:
        raise CheckpointError(f"{path} has a fixed batch of {dims[0].dim_value}: export it with dynamic=True "
                              f"(yolo export model=... format=onnx dynamic=True) to join an ensemble")
    meta = {p.key: p.value for p in model.metadata_props}
    size = ast.literal_eval(meta["imgsz"])[0] if "imgsz" in meta else dims[2].dim_value
    if not size:
        raise CheckpointError(f"{path} says neither its input size (metadata imgsz) nor a fixed one in its shape")
    return model, int(size), names_list(meta["names"]) if "names" in meta else None


def _opset(model) -> int:
    """The default-domain opset a model imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _at_opset(model, opset: int, source):
    """``model`` converted up to ``opset`` (converting down lacks adapters for operators such as Split-18)."""
    from onnx import version_converter

    from spayolo.errors import CheckpointError

    if _opset(model) == opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except RuntimeError as e:  # the converter's message names its C++ source first
        raise CheckpointError(f"{source}: ONNX cannot convert its opset {_opset(model)} to the ensemble's {opset} "
                              f"({str(e).splitlines()[0][-120:]}); export it at opset {opset}") from e


def member_graph(model: str | Path, trusted: bool = False):
    """One member as (ONNX model, input size, class names): a .onnx as it is, a .pt exported with a dynamic batch."""
    import onnx
    import torch

    from spayolo.torch_classifier import TorchClassifier

    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return _onnx_member(path)
    classifier = TorchClassifier(path, trusted=trusted)
    size = classifier.sizes[0]
    from spayolo.export import onnx_bytes

    graph = onnx.load_from_string(onnx_bytes(classifier.model, torch.zeros(1, 3, size, size), {0: "batch"}, OPSET))
    return graph, size, classifier.names


def export_ensemble(models: list[str | Path], out: str | Path, trusted: bool = False) -> Path:
    """Write the ensemble of ``models`` to ``out`` (one file, written whole under a temporary name first)."""
    import onnx
    from onnx import compose, helper

    from spayolo.errors import UsageError

    if len(models) < 2:
        raise UsageError("an ensemble needs at least two models")
    members = [member_graph(m, trusted) for m in models]
    opset = max(_opset(member) for member, _, _ in members)
    members = [(_at_opset(member, opset, m), size, n) for m, (member, size, n) in zip(models, members)]
    names = [n for _, _, n in members]
    if any(n != names[0] for n in names):
        listed = "; ".join(f"{m}: {n}" for m, n in zip(models, names))
        raise UsageError(f"the models of an ensemble must have the same classes in the same order: {listed}")
    sizes = sorted({size for _, size, _ in members})
    nodes, initializers, value_info, outputs = [], [], [], []
    for i, (member, size, _) in enumerate(members):
        member = compose.add_prefix(member, f"m{i}_")
        nodes.append(helper.make_node("Identity", [f"images_{size}"], [member.graph.input[0].name]))
        nodes.extend(member.graph.node)
        initializers.extend(member.graph.initializer)
        value_info.extend(member.graph.value_info)
        outputs.append(member.graph.output[0].name)
    nodes.append(helper.make_node("Mean", outputs, ["probs"]))
    inputs = [helper.make_tensor_value_info(f"images_{s}", onnx.TensorProto.FLOAT, ["batch", 3, s, s]) for s in sizes]
    output = helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", len(names[0] or [])])
    graph = helper.make_graph(nodes, "spayolo_ensemble", inputs, [output], initializers, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="spayolo")
    meta = {"task": "classify", "imgsz": str(sizes), "members": str([str(m) for m in models]),
            "description": f"spayolo ensemble of {len(models)} classifiers, probabilities averaged"}
    if names[0]:
        meta["names"] = str(dict(enumerate(names[0])))
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".partial", dir=out.parent) as work:
        whole = Path(work) / out.name  # made by open(), so it gets a new file's usual mode (mkstemp's is private)
        whole.write_bytes(model.SerializeToString())
        os.replace(whole, out)
    return out
