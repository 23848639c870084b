"""Expression classifiers behind one call: each face's views at the model's input size(s) in, probabilities out.

ONNX models run here on ONNX Runtime with NumPy alone; PyTorch models (a .pt, a YOLO object, an nn.Module) run in
spayolo.torch_classifier, which the full install adds. A list of models is an ensemble: its members' probabilities
are averaged, each member fed crops at its own input size. Every classifier averages over the views of a face
(test-time augmentation, spayolo.tta) and, with ``mirror``, over their mirror images too.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spayolo.errors import CheckpointError, MissingDependencyError, MissingFileError, UsageError
from spayolo.paths import packaged
from spayolo.runtime import OnnxModel, cuda_index, ensemble_threads

__all__ = ("DEFAULT_ENSEMBLE", "DEFAULT_MODELS", "EXPRESSIONS", "FAST_MODEL", "Ensemble", "OnnxClassifier",
           "expression_warning", "load_classifier", "mean_over_views", "names_list", "probabilities", "shipped_names")

# shipped classifiers by the name --model takes: the default is the most accurate row of docs/results.md's table (a tie
# in top-1 goes to mean per-class accuracy and speed) that keeps one face at 60 % of the frame rate of the single model
# before ensembles; the fast single model is one flag away
FAST_MODEL = "spayolo-n-fer2013"
DEFAULT_ENSEMBLE = ("yolov8s-cls-kd-fer2013", "yolov8s-cls-kd-seed1-fer2013", "yolov8s-cls-kd-seed2-fer2013",
                    "yolov8-cls-p4-s-kd-fer2013")
# per backend: the members quantized to INT8 (spayolo quantize; as accurate as fp32, and faster), or the checkpoints
# they were exported from
DEFAULT_MODELS = {"onnx": tuple(packaged("weights", f"{name}-int8.onnx") for name in DEFAULT_ENSEMBLE),
                  "torch": tuple(packaged("weights", f"{name}.pt") for name in DEFAULT_ENSEMBLE)}


def names_list(names) -> list[str]:
    """Class names in index order from a list, an {index: name} dict, or ONNX metadata's string of that dict."""
    if isinstance(names, str):
        names = ast.literal_eval(names)
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def probabilities(y: np.ndarray) -> np.ndarray:
    """Rows of class probabilities: ``y`` itself when its rows already are (Ultralytics' heads), else softmax(y)."""
    y = y.astype(np.float32)
    if (y >= 0).all() and np.allclose(y.sum(1), 1, atol=1e-3):
        return y
    e = np.exp(y - y.max(1, keepdims=True))  # logits, e.g. a bare nn.Module's
    return e / e.sum(1, keepdims=True)


def mean_over_views(run: Callable[[list[np.ndarray]], np.ndarray], views: list[np.ndarray], mirror: bool) -> np.ndarray:
    """(N, nc) probabilities averaged over the V views (V,N,3,S,S) of each input, and their mirror images if asked;
    ``run`` maps one (B,3,S,S) batch per input to (B, nc) probabilities, all views of all faces in one call."""
    views = [np.concatenate([v, v[..., ::-1]]) if mirror else v for v in views]
    count, faces = views[0].shape[:2]
    probs = run([np.ascontiguousarray(v.reshape(count * faces, *v.shape[2:])) for v in views])
    return probs.reshape(count, faces, -1).mean(0)


class OnnxClassifier:
    """A classification .onnx: one (batch, classes) output, one input per input size (one, or an exported ensemble's).

    Class names and input sizes come from the metadata Ultralytics (and spayolo's ensemble export) write, else from
    the input shapes; ``sizes`` is None for a model whose size is neither (the pipeline then picks one).
    """

    def __init__(self, model: str | Path | bytes, device="cpu", providers=None, threads: int | None = None,
                 source: str | None = None):
        self.source = source or str(model)
        self.model = OnnxModel(model, device, providers, threads)
        meta, outputs = self.model.metadata, self.model.session.get_outputs()
        if meta.get("task", "classify") != "classify":
            raise CheckpointError(f"{self.source} is a {meta['task']} model, not a classifier: pass a classification "
                                  f"model (.pt/.onnx) as --model, and a face detector with --detector")
        if len(outputs) != 1 or len(outputs[0].shape) != 2:
            shapes = ", ".join(str(o.shape) for o in outputs)
            raise CheckpointError(f"{self.source} is not a classifier: a classifier has one (batch, classes) output, "
                                  f"this one has {shapes}")
        self.names = names_list(meta["names"]) if "names" in meta else None
        self.sizes = self._sizes(meta)

    def _sizes(self, meta: dict) -> tuple[int, ...] | None:
        inputs = self.model.session.get_inputs()
        if "imgsz" in meta:
            sizes = ast.literal_eval(meta["imgsz"])  # Ultralytics: [h, w] of the one input; an ensemble: one per input
            return (int(sizes[0]),) if len(inputs) == 1 else tuple(int(s) for s in sizes)
        fixed = [i.shape[2] for i in inputs if isinstance(i.shape[2], int)]
        return tuple(fixed) if len(fixed) == len(inputs) else None

    def check_size(self, imgsz: int) -> None:
        """An ONNX classifier runs at the size it was exported at (spayolo's DFT bases are constants in it)."""
        if self.sizes and self.sizes != (imgsz,):
            raise UsageError(f"{self.source} was exported for {self.sizes[0]}x{self.sizes[0]} inputs, not {imgsz}: "
                             f"pass --imgsz {self.sizes[0]} or leave --imgsz out (the file says its size), or export "
                             f"it again at {imgsz}")

    def _runs(self, size: int) -> bool:
        """Whether the model takes a (1, 3, size, size) input; ONNX Runtime's own error log is kept quiet."""
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.log_severity_level = 4
        feed = {name: np.zeros((self.model.batch or 1, 3, size, size), np.float32) for name in self.model.inputs}
        try:
            self.model.session.run(None, feed, options)
        except Exception:  # noqa: BLE001  ONNX Runtime reports a shape mismatch in its own exception types
            return False
        return True

    def size_that_runs(self, wanted: int, given: bool) -> int:
        """The input size of a model whose file does not say it (metadata stripped, dynamic height and width):
        ``wanted`` if the model runs on it, else a UsageError naming a usual size that it does run on."""
        if self._runs(wanted):
            return wanted
        fits = next((s for s in (32, 40, 44, 48, 56, 64, 96, 112, 128, 160, 192, 224, 256)
                     if s != wanted and self._runs(s)), None)
        how = "given with --imgsz" if given else "assumed, as its file does not say its size"
        hint = f"it runs on {fits}x{fits}: pass --imgsz {fits}" if fits else "pass its input size with --imgsz"
        raise UsageError(f"{self.source} does not run on {wanted}x{wanted} inputs ({how}); {hint}")

    def __call__(self, views: dict[int, np.ndarray], mirror: bool = False) -> np.ndarray:
        """(N, nc) probabilities from views {size: (V,N,3,S,S) float32 RGB 0-1} at each of ``sizes``."""
        return mean_over_views(lambda x: probabilities(self.model(*x)[0]), [views[s] for s in self.sizes], mirror)


class Ensemble:
    """Classifiers whose probabilities are averaged, each fed the views at its own input size; same class names.

    ``together`` members run at once on a thread pool (ONNX Runtime and NumPy release the GIL), the slowest of the
    last call first: started last, a slow member would keep the others' threads idle to the end.
    """

    def __init__(self, members: list, together: int = 1):
        names = [m.names for m in members]
        if any(n != names[0] for n in names):
            listed = "; ".join(f"{m.source}: {n}" for m, n in zip(members, names))
            raise UsageError(f"the models of an ensemble must have the same classes in the same order: {listed}")
        self.members, self.names, self.source = members, names[0], " + ".join(str(m.source) for m in members)
        self.sizes = tuple(sorted({s for m in members for s in m.sizes}))
        self.pool = ThreadPoolExecutor(together, "spayolo-ensemble") if together > 1 else None
        self.seconds = [0.0] * len(members)  # each member's time on the last call

    def __call__(self, views: dict[int, np.ndarray], mirror: bool = False) -> np.ndarray:
        if not self.pool:
            return np.mean([member(views, mirror) for member in self.members], 0)
        order = sorted(range(len(self.members)), key=lambda i: -self.seconds[i])
        probs = dict(zip(order, self.pool.map(lambda i: self._timed(i, views, mirror), order)))
        return np.mean([probs[i] for i in range(len(self.members))], 0)  # the members' order: the same sums each call

    def _timed(self, index: int, views: dict[int, np.ndarray], mirror: bool) -> np.ndarray:
        start = time.perf_counter()
        probs = self.members[index](views, mirror)
        self.seconds[index] = time.perf_counter() - start
        return probs


def _is_onnx(model, backend: str) -> bool:
    """Whether ``model`` (a path, a shipped name or an object) runs on ONNX Runtime with ``backend``: with 'torch'
    only an .onnx file does, as load_classifier resolves it."""
    return backend == "onnx" or (isinstance(model, (str, Path))
                                 and (_shipped(model, backend) or Path(model)).suffix.lower() == ".onnx")


def _torch_classifier(model, backend: str, device, half: bool, trusted: bool, imgsz: int | None, threads: int | None):
    try:
        from spayolo.torch_classifier import TorchClassifier
    except ImportError as error:
        raise MissingDependencyError(f"classifier {model}: a PyTorch model needs the full install (pip install "
                                     f"spayolo[train]); or export it to ONNX there (yolo export model={model} "
                                     f"format=onnx) and pass the .onnx") from error
    classifier = TorchClassifier(model, device, half, trusted, imgsz)
    return classifier.to_onnx(threads) if backend == "onnx" else classifier


def shipped_names() -> list[str]:
    """The classifiers that ship with this install, by the name ``--model`` takes (``spayolo-n-fer2013``)."""
    weights = packaged("weights")
    return sorted({p.stem for p in (*weights.glob("*.onnx"), *weights.glob("*.pt"))})


def _shipped(model: str | Path, backend: str) -> Path | None:
    """A shipped classifier given by name: its .onnx for the ONNX backend, its .pt for torch where there is one."""
    name = str(model)
    if Path(name).exists() or Path(name).name != name or Path(name).suffix:
        return None
    found = [packaged("weights", f"{name}{suffix}") for suffix in ((".onnx", ".pt") if backend == "onnx" else
                                                                    (".pt", ".onnx"))]
    return next((p for p in found if p.is_file()), None)


def load_classifier(model=None, backend: str = "onnx", device="cpu", half: bool = False, trusted: bool = False,
                    imgsz: int | None = None, threads: int | None = None):
    """A classifier for FERPipeline: None (the default ensemble), a .onnx or .pt path, the name of a shipped model
    (``spayolo-n-fer2013``), a YOLO object, an nn.Module, or a list of those (an ensemble). ``imgsz`` is the input
    size of a single model that does not fix its own.

    An .onnx runs on ONNX Runtime whatever the backend; anything else runs in PyTorch, or with backend 'onnx' is
    exported in memory and run on ONNX Runtime.
    """
    if model is None:
        missing = [str(path) for path in DEFAULT_MODELS[backend] if not path.is_file()]
        if missing:
            raise MissingFileError(f"default classifier weights not found: {', '.join(missing)} (pass model= / "
                                   f"--model, e.g. --model {FAST_MODEL})")
        model = list(DEFAULT_MODELS[backend])
    if isinstance(model, (list, tuple)):
        if not model:
            raise UsageError("an ensemble needs at least one model (--model a.pt b.onnx ...)")
        if imgsz:
            raise UsageError(f"imgsz (--imgsz) sets the size of one model; an ensemble's members run at their own "
                             f"(the default is an ensemble: --model {FAST_MODEL} runs one model)")
        together, each = 1, threads
        if all(_is_onnx(m, backend) for m in model) and cuda_index(device) is None:
            together, each = ensemble_threads(len(model), threads)  # a GPU runs one model at a time anyway
        members = [load_classifier(m, backend, device, half, trusted, None, each) for m in model]
        return members[0] if len(members) == 1 else Ensemble(members, together)
    if isinstance(model, (str, Path)):
        path = _shipped(model, backend) or Path(model)
        if not path.is_file():
            raise MissingFileError(f"classifier weights not found: {path} (--model; a shipped model by name: "
                                   f"{', '.join(shipped_names()) or 'none in this install'})")
        if path.suffix.lower() == ".onnx":
            classifier = OnnxClassifier(path, device, threads=threads)
            if classifier.sizes is None:
                classifier.sizes = (classifier.size_that_runs(imgsz or 64, given=bool(imgsz)),)
            elif imgsz:
                classifier.check_size(imgsz)
            return classifier
        model = path
    return _torch_classifier(model, backend, device, half, trusted, imgsz, threads)


# class names of the expression datasets spayolo knows and of common FER models, lower case
EXPRESSIONS = frozenset({"anger", "angry", "calm", "contempt", "disgust", "disgusted", "fear", "fearful", "happiness",
                         "happy", "joy", "neutral", "sad", "sadness", "scared", "surprise", "surprised"})


def expression_warning(names: list[str] | None, source: str) -> str | None:
    """One line saying that a classifier's classes are not facial expressions (an ImageNet model given by mistake),
    naming a few of them; None when one of them is an expression (or the model names none)."""
    if not names or any(str(n).strip().lower() in EXPRESSIONS for n in names):
        return None
    shown = ", ".join(map(str, names[:4])) + (f", ... {names[-1]}" if len(names) > 4 else "")
    return (f"{source} has {len(names)} classes ({shown}), none of them a facial expression: its labels are not "
            f"expressions (pass an expression classifier with --model)")
