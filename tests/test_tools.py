"""The spayolo command and its subcommands: live, prepare, evaluate, kfold, cam (benchmark: dispatch only)."""

from __future__ import annotations

import csv
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from ultralytics.data.augment import classify_transforms

from conftest import (
    REPO,
    count_frames,
    crafted_checkpoint,
    input_sensitive,
    run_cli,
    small_hopper,
    write_image_folder,
    write_video,
    yolo_cli,
)
from spayolo import cli
from spayolo.apps import cam, prepare as prep
from spayolo.apps.evaluate import evaluate, table
from spayolo.apps.kfold import fold_roots, inner_split, load_candidates, parse_overrides, train_and_score
from spayolo.apps.overlay import COLOURS, draw
from spayolo.apps.signals import Stopped, StopSignals
from spayolo.checkpoints import training_state
from spayolo.classifier import load_classifier
from spayolo.data import DATASETS_CFG_DIR, DatasetNotPreparedError, resolve_dataset
from spayolo.engine.scoring import folder_probabilities, folder_samples
from spayolo.errors import MissingFileError, SpayoloError, UsageError
from spayolo.pipeline import Face, FERPipeline
from spayolo.tta import view_fractions

TOOLS = sorted(p for p in (REPO / "tools").glob("*.py") if p.name != "benchmark.py")


# --- the command -----------------------------------------------------------------------------------------------------


def test_command_dispatch_and_usage(capsys, monkeypatch):
    usage = f"usage: spayolo [--debug] {{{','.join(cli.COMMANDS)}}}"
    assert cli.main([]) == 2 and usage in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command, (_, summary) in cli.COMMANDS.items():  # every command, with what it does, one line each
        assert f"  {command} " in listed and summary in listed
    assert cli.main(["train"]) == 2 and "unknown command 'train'" in capsys.readouterr().err
    calls = []
    fake = types.ModuleType("spayolo.benchmark")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "spayolo.benchmark", fake)  # the lead's module, imported only when asked for
    assert cli.main(["benchmark", "--pipeline"]) == 0 and calls == [["--pipeline"]]


def raising(error: BaseException):
    """A function that raises ``error`` whatever it is given."""

    def fail(*args, **kwargs):
        raise error

    return fail


def fails_with(error: BaseException):
    """A command module whose main raises ``error``."""
    return types.SimpleNamespace(main=raising(error))


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv("SPAYOLO_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "spayolo.benchmark", fails_with(UsageError("--imgsz 0: not a size")))
    assert cli.main(["benchmark"]) == 2
    assert capsys.readouterr().err == "spayolo benchmark: error: --imgsz 0: not a size\n"
    for debug in (["--debug"], []):  # the flag, or the environment variable: the traceback, then the same line
        monkeypatch.setenv("SPAYOLO_DEBUG", "0" if debug else "1")
        assert cli.main([*debug, "benchmark"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and "UsageError" in err
        assert err.endswith("spayolo benchmark: error: --imgsz 0: not a size\n")
    monkeypatch.delenv("SPAYOLO_DEBUG")
    for bug in (ValueError("math domain error"), KeyError("top1"), FileNotFoundError("runs/x/args.yaml"),
                ImportError("cannot import name 'OnnxModel'")):  # what spayolo's own code raises when it is wrong
        monkeypatch.setitem(sys.modules, "spayolo.benchmark", fails_with(bug))
        with pytest.raises(type(bug)):
            cli.main(["benchmark"])
    monkeypatch.setitem(sys.modules, "spayolo.benchmark", fails_with(KeyboardInterrupt()))
    assert cli.main(["benchmark"]) == 130 and capsys.readouterr().err == "spayolo benchmark: interrupted\n"


def test_user_error_types_are_the_builtins_library_users_catch():
    from spayolo.compat import UnsupportedUltralyticsError
    from spayolo.errors import CheckpointError, MissingDependencyError, MissingFileError, OutputExistsError
    from spayolo.parser import ModelConfigError

    for error, builtin in ((UsageError, ValueError), (CheckpointError, ValueError), (ModelConfigError, ValueError),
                           (MissingFileError, FileNotFoundError), (DatasetNotPreparedError, FileNotFoundError),
                           (OutputExistsError, FileExistsError), (MissingDependencyError, ImportError),
                           (UnsupportedUltralyticsError, ImportError)):
        assert issubclass(error, SpayoloError) and issubclass(error, builtin), error


def test_benchmark_command_reaches_the_benchmark_module(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["benchmark", "--help"])
    assert stop.value.code == 0 and "--pipeline" in capsys.readouterr().out


def test_tools_are_thin_wrappers_of_the_command():
    for tool in TOOLS:
        text = tool.read_text()
        assert "sys.path" not in text and "from spayolo" in text and len(text.splitlines()) <= 10, tool.name
    cfg = (REPO / "setup.cfg").read_text()
    assert "spayolo = spayolo.cli:main" in cfg and "spayolo.apps" in cfg


@pytest.mark.slow
def test_python_m_spayolo_and_tool_scripts_run(tmp_path):
    r = run_cli([sys.executable, "-m", "spayolo", "prepare", "fer2013"], cwd=tmp_path, timeout=120,
                env={"SPAYOLO_DATASETS": str(tmp_path / "datasets")})  # not the user's prepared copy
    assert r.returncode == 2 and r.stderr.startswith("spayolo prepare: error: say where the raw data is"), r.stderr
    r = run_cli([sys.executable, str(REPO / "tools" / "live.py"), "--min-face", "0"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "argument --min-face: 0 is not a positive number" in r.stderr, r.stderr


def test_shared_flags_default_to_the_library():
    from spayolo.apps.args import pipeline_kwargs
    from spayolo.apps.live import parse_args

    defaults = {k: p.default for k, p in inspect.signature(FERPipeline).parameters.items()}
    for key, value in pipeline_kwargs(parse_args([])).items():
        assert value == defaults[key], key
    assert defaults["backend"] == "onnx" and defaults["tta"] == "flip+zoom"  # measured to help most (README)
    assert parse_args(["--no-tta"]).tta == "none" and parse_args(["--tta", "flip"]).tta == "flip"


def test_readme_setup_installs_what_its_test_command_needs():
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    assert re.search(r'pip install -e "?\.\[test\]"?', commands[0]), commands[0]
    assert commands[2].startswith("python -m pytest")
    assert re.search(r"test =\s+pytest", (REPO / "setup.cfg").read_text())
    ci = re.search(r'pip install -q -e "\.\[([\w,]+)\]"', (REPO / ".ci" / "run").read_text())
    assert ci and "test" in ci[1].split(","), "CI installs the full package with at least the README's test extra"


@pytest.mark.parametrize("command", ["live", "evaluate", "kfold", "cam"])
def test_commands_load_checkpoints_restricted(tmp_path, capsys, command):
    crafted, marker = crafted_checkpoint(tmp_path)
    data = write_image_folder(tmp_path / "faces", per_class=1, size=32)
    args = {"live": ["--source", str(data / "val" / "happy"), "--no-show", "--save", "", "--json", ""],
            "evaluate": ["--data", str(data)], "kfold": [str(tmp_path / "none")], "cam": ["--source", str(data)]}
    (tmp_path / "none" / "fold0" / "train").mkdir(parents=True)
    assert cli.main([command, "--model", str(crafted), *args[command]]) == 2
    err = capsys.readouterr().err
    assert "crafted.pt was refused by restricted loading" in err and "--trust-checkpoint" in err
    assert not marker.exists()


def test_only_a_bad_file_is_called_a_bad_checkpoint(tmp_path, tiny_ckpt, monkeypatch):
    """What Ultralytics' loader reports a damaged file with becomes one CheckpointError naming it; any other error
    while loading is a bug, and keeps its type and traceback."""
    from ultralytics.nn import tasks

    from spayolo.checkpoints import load_checkpoint, load_yolo
    from spayolo.errors import CheckpointError

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(tiny_ckpt.read_bytes()[:3000])
    for load in (load_checkpoint, load_yolo):
        with pytest.raises(CheckpointError, match="damaged.pt is not a loadable checkpoint"):
            load(damaged)
    monkeypatch.setattr(tasks, "torch_safe_load", raising(KeyError("train_args")))
    for load in (load_checkpoint, load_yolo):
        with pytest.raises(KeyError, match="train_args"):
            load(tiny_ckpt)


# --- live -------------------------------------------------------------------------------------------------------------


def live(tmp_path: Path, *args: str, model: Path | None = None) -> int:
    """spayolo live in this process, headless, with the given extra arguments."""
    base = ["live", "--no-show", "--backend", "torch"] + (["--model", str(model)] if model else [])
    return cli.main([*base, *map(str, args)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_live_video_end_to_end(tmp_path, tiny_ckpt, capsys):
    video = write_video(tmp_path / "in.mp4")
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live(tmp_path, "--source", video, "--save", out, "--json", js, model=tiny_ckpt) == 0
    lines = read_jsonl(js)
    assert [x["frame"] for x in lines] == [0, 1, 2] and "file" not in lines[0]
    assert all(len(x["faces"]) == 1 and x["faces"][0]["track_id"] == 1 for x in lines)
    assert count_frames(out) == 3 and cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_WIDTH) == 160
    assert f"wrote {out}" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*partial*"))  # temporary files renamed into place


def test_live_refuses_outputs_that_are_inputs(tmp_path, tiny_ckpt, capsys):
    video = write_video(tmp_path / "clip.mp4")
    before = video.read_bytes()
    for args in (("--save", video), ("--json", video), ("--save", "", "--json", tiny_ckpt),
                 ("--save", tmp_path / "same.mp4", "--json", tmp_path / "same.mp4")):
        assert live(tmp_path, "--source", video, *args, model=tiny_ckpt) == 2, args
        err = capsys.readouterr().err
        assert "is also an input" in err and err.count("\n") == 1, err
    assert video.read_bytes() == before and count_frames(video) == 3


@pytest.mark.parametrize("args, message", [
    (("--save", "/proc/spayolo-test.mp4"), "--save /proc/spayolo-test.mp4: cannot write"),
    (("--save", "{tmp}/out.xyz"), "unknown video format '.xyz'"),
    (("--save", "{tmp}"), "is a folder"),
    (("--save", "{tmp}/clip.mp4/out.mp4"), "is a file, not a folder"),
    (("--json", "{tmp}/clip.mp4/out.jsonl"), "is a file, not a folder"),
    (("--fps", "0"), "argument --fps: 0 is not a positive number"),
    (("--min-face", "0"), "argument --min-face: 0 is not a positive number"),
    (("--imgsz", "-5"), "argument --imgsz: -5 is not a positive integer"),
    (("--margin", "-1"), "argument --margin: -1 is not a number >= 0"),
    (("--device", "cuda:7"), "'cuda:7' is not available"),
    (("--device", "gpu0"), "'gpu0' is not a device"),
])
def test_live_bad_outputs_and_flags_fail_before_reading(tmp_path, tiny_ckpt, capsys, args, message):
    video = write_video(tmp_path / "clip.mp4")
    args = [a.format(tmp=tmp_path) for a in args]
    js = tmp_path / "never.jsonl"
    try:
        code = live(tmp_path, "--source", video, "--json", js, *args, model=tiny_ckpt)
    except SystemExit as stop:  # argparse refuses a flag's value itself
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message.replace("'", "") in err.replace("'", ""), err
    assert "Traceback" not in err and not js.exists() and not list(tmp_path.glob(".*partial*"))


def test_live_unusable_models_exit_2_naming_the_file(tmp_path, tiny_ckpt, capsys):
    video = write_video(tmp_path / "clip.mp4")
    corrupt, yaml_file = tmp_path / "corrupt.pt", tmp_path / "net.yaml"
    corrupt.write_bytes(tiny_ckpt.read_bytes()[:3000])
    yaml_file.write_text("nc: 7\n")
    for model in (corrupt, yaml_file, tmp_path / "missing.pt"):
        assert live(tmp_path, "--source", video, "--save", "", "--json", "", model=model) == 2
        err = capsys.readouterr().err
        assert str(model) in err and err.count("\n") == 1, err


def test_live_undecodable_sources_exit_2_without_writing(tmp_path, tiny_ckpt, capsys):
    empty, text, broken = tmp_path / "empty.mp4", tmp_path / "notes.txt", tmp_path / "broken"
    empty.write_bytes(b"")
    text.write_text("not a video\n" * 100)
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8 no")
    (broken / "b.png").write_bytes(b"")
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    for source in (empty, text, broken, broken / "a.jpg"):
        assert live(tmp_path, "--source", source, "--save", out, "--json", js, model=tiny_ckpt) == 2, source
        captured = capsys.readouterr()
        assert source.name in captured.err and "wrote" not in captured.out
        assert not out.exists() and not js.exists() and not list(tmp_path.glob(".*partial*"))


def test_live_folder_records_files_and_sizes_the_video_for_all(tmp_path, tiny_ckpt, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "0_tiny.png"), np.zeros((1, 1, 3), np.uint8))  # a 1x1 first image
    cv2.imwrite(str(folder / "1_face.png"), small_hopper(200, 240))
    (folder / "2_broken.jpg").write_bytes(b"\xff\xd8 no")
    ok, jpeg = cv2.imencode(".jpg", small_hopper(150, 100))
    (folder / "3_cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])  # a truncated JPEG
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live(tmp_path, "--source", folder, "--save", out, "--json", js, model=tiny_ckpt) == 0
    err = capsys.readouterr().err
    assert "skipping undecodable image" in err and "2_broken.jpg" in err
    assert "3_cut.jpg is a truncated JPEG" in err
    records = read_jsonl(js)
    assert [r["file"] for r in records] == ["0_tiny.png", "1_face.png", "3_cut.jpg"]
    assert len(records[1]["faces"]) == 1 and all(f["track_id"] is None for r in records for f in r["faces"])
    cap = cv2.VideoCapture(str(out))
    assert count_frames(out) == 3  # the 1x1 image did not set the size: every frame fits
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (200, 240)


def test_live_goes_headless_without_a_display(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")

    def no_window(*args):
        raise AssertionError("a window was opened without a display")

    monkeypatch.setattr(cv2, "imshow", no_window)
    video, out = write_video(tmp_path / "in.mp4"), tmp_path / "out.mp4"
    assert cli.main(["live", "--source", str(video), "--model", str(tiny_ckpt), "--save", str(out), "--json", ""]) == 0
    assert capsys.readouterr().err.count("no display found") == 1 and count_frames(out) == 3


def _cut_avi(path: Path, frames: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for k in range(frames):
        writer.write(np.roll(small_hopper(160, 120), k, axis=1))
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_live_dropped_stream_exits_1_and_keeps_what_it_wrote(tmp_path, tiny_ckpt, capsys):
    source = _cut_avi(tmp_path / "cut.avi")
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live(tmp_path, "--source", source, "--save", out, "--json", js, model=tiny_ckpt) == 1
    captured = capsys.readouterr()
    assert "cut.avi: no frame after" in captured.err and f"wrote {out}" in captured.out
    assert 5 < len(read_jsonl(js)) == count_frames(out) < 30


def _default_sigint():
    """Give the child Ctrl-C's default action: a shell that starts the suite in the background (`&`, nohup) makes its
    children ignore SIGINT, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_raises():
    """Ctrl-C's Python default in this process while a test runs: pytest started in the background (`&`, nohup) has
    SIGINT ignored, which StopSignals rightly keeps, and a test of Ctrl-C would then test nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Stopped)])
def test_a_stop_while_a_frame_is_written_waits_for_both_outputs(signum, stop, sigint_raises):
    written = []
    with StopSignals() as signals:
        with pytest.raises(stop):
            with signals.deferred():
                written.append("json line")
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # the handler runs here, between the two writes
                written.append("video frame")
        assert written == ["json line", "video frame"]
        with pytest.raises(stop):  # outside a write it stops at once
            os.kill(os.getpid(), signum)
            time.sleep(1)
            written.append("never")
    assert written == ["json line", "video frame"] and signal.getsignal(signal.SIGTERM) is not signals._handler


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_live_stopped_by_a_signal_keeps_video_and_records_complete(tmp_path, tiny_ckpt, signum, code):
    video = write_video(tmp_path / "long.mp4", n=400)
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    partial = lambda: next(tmp_path.glob(".out.*.partial.jsonl"), tmp_path / "none")  # noqa: E731  a name per run
    env = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "spayolo", "live", "--source", str(video), "--model", str(tiny_ckpt),
                             "--no-show", "--backend", "torch", "--save", str(out), "--json", str(js)],
                            cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not (partial().exists() and len(partial().read_text().splitlines()) >= 5):
        time.sleep(0.2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr[-2000:]
    records = read_jsonl(js)
    assert 5 <= len(records) < 400 and count_frames(out) == len(records)
    assert f"wrote {out}" in stdout


# --- overlay ----------------------------------------------------------------------------------------------------------


def _face(box, names=("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")) -> Face:
    probs = np.full(len(names), 1 / len(names), np.float32)
    probs[0] += 1e-3
    return Face(np.array(box, np.float32), 1.0, None, names[0], probs, list(names), track_id=3)


def test_overlay_stays_inside_the_frame_and_clear_of_the_fps():
    frame = np.zeros((240, 320, 3), np.uint8)
    fps_only = draw(frame, [], 12.3)
    ys, xs = np.nonzero(fps_only.any(2))
    top, right = ys.max() + 1, xs.max() + 1  # the FPS text's extent
    close_up = draw(frame, [_face([2, 0, 60, 70])], 12.3)  # a face touching the top edge, under the FPS text
    yellow = np.all(fps_only == (0, 255, 255), axis=2)
    assert np.array_equal(close_up[yellow], fps_only[yellow])  # the FPS stays legible
    label = np.all(close_up == COLOURS[0], axis=2)  # the label is drawn in class 0's colour, as is the box ...
    label[:, :4] = label[:, 58:62] = label[:2] = label[68:72] = False  # ... whose lines are masked out
    assert label[:top, :right].sum() == 0 and label.sum() > 20  # drawn, and not under the FPS text
    corner = draw(frame, [_face([250, 200, 319, 239])], None)  # a face in the bottom-right corner
    for j, colour in enumerate(COLOURS):  # every class's bar is fully drawn, none below the bottom edge
        bar = np.all(corner == colour, axis=2)
        assert bar.sum() >= 7 * 9, (j, bar.sum())


# --- prepare ----------------------------------------------------------------------------------------------------------


def pixels(value: int, n: int = 48 * 48) -> str:
    return " ".join(str((value + i) % 256) for i in range(n))


def write_fer_csv(file: Path, rows: list[tuple]) -> Path:
    with open(file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    return file


def images_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png") if not p.name.startswith(prep.TMP))


FER_ROWS = [
    (3, pixels(0), "Training"),  # line 2 -> train/happy/fer0000000.png
    (6, pixels(7), "Training"),  # line 3 -> train/neutral (code 6 is neutral, not surprise)
    (4, "12 x 255", "PublicTest"),  # line 4: not numbers
    (0, pixels(1, 47 * 48), "PublicTest"),  # line 5: wrong pixel count
    (5, pixels(9), "PublicTest"),  # line 6 -> val/surprise
    (9, pixels(2), "PrivateTest"),  # line 7: no emotion 9
    (1, pixels(3), "Holdout"),  # line 8: unknown Usage
    (2, pixels(4), "PrivateTest"),  # line 9 -> test/fear
]


def test_dataset_yamls_consistent():
    """Class index = sorted folder order (what Ultralytics assigns); every raw code maps to a class."""
    files = {p.stem: yaml.safe_load(p.read_text()) for p in DATASETS_CFG_DIR.glob("*.yaml")}
    assert set(files) == {"fer2013", "ferplus", "affectnet7", "affectnet8", "rafdb", "ckplus", "jaffe", "kdef"}
    for name, cfg in files.items():
        names = list(cfg["names"].values())
        assert names == sorted(names) and list(cfg["names"]) == list(range(len(names))), name
        assert set(cfg.get("labels", {}).values()) <= set(names), name
        assert "prepare" in cfg and ("folds" in cfg) == ("pattern" in cfg), name
    assert len(files["affectnet7"]["names"]) == 7 and len(files["affectnet8"]["names"]) == 8
    assert set(files["ferplus"]["names"].values()) == set(files["ferplus"]["votes"][:8])
    for name, file_name, subject, label in (("ckplus", "S005_001_00000011.png", "S005", None),
                                            ("jaffe", "KA.AN1.39.tiff", "KA", "AN"),
                                            ("kdef", "AF01ANS.JPG", "F01", "AN"), ("kdef", "BM35SUS.JPG", "M35", "SU")):
        match = re.match(files[name]["pattern"], file_name, re.IGNORECASE)
        assert match["subject"] == subject and match.groupdict().get("label") == label, file_name
    assert re.match(files["kdef"]["pattern"], "AF01ANHL.JPG") is None  # KDEF: frontal (S) images only
    assert files["fer2013"]["labels"] == {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise",
                                          6: "neutral"}


def test_prepare_fer_csv(tmp_path):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "fer2013"
    report = prep.prepare("fer2013", out, csv_file=csv_file)
    assert images_in(out) == ["test/fear/fer0000007.png", "train/happy/fer0000000.png",
                              "train/neutral/fer0000001.png", "val/surprise/fer0000004.png"]
    img = cv2.imread(str(out / "train/neutral/fer0000001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 48) and img[0, 0] == 7 and img[47, 47] == (7 + 48 * 48 - 1) % 256  # lossless, row-major
    bad = [p for p in report.problems if "line" in p]
    assert [p.split(":")[0] for p in bad] == [f"fer2013.csv line {n}" for n in (4, 5, 7, 8)]
    assert "2256 pixels, expected 2304" in bad[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train"] == {"happy": 1, "neutral": 1} and manifest["skipped"] == {"bad CSV row": 4}
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(prep.dataset_cfg("fer2013")["names"].values())
    assert not (tmp_path / "fer2013.partial").exists()


def test_prepare_existing_output_needs_force(tmp_path, capsys):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "out"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("user data")
    assert cli.main(["prepare", "fer2013", "--csv", str(csv_file), "--out", str(out)]) == 2
    assert "spayolo prepare: " in (err := capsys.readouterr().err) and "pass --force" in err
    assert (out / "keep.txt").read_text() == "user data"
    assert cli.main(["prepare", "fer2013", "--csv", str(csv_file), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and len(images_in(out)) == 4


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", FER_ROWS)
    out = tmp_path / "fer2013"
    real_save, calls = prep.save_gray, []

    def dies_on_third(target, img):
        calls.append(target.name)
        if len(calls) == 3:
            target.parent.mkdir(parents=True)
            (target.parent / (prep.TMP + target.name)).write_bytes(b"half")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        real_save(target, img)

    monkeypatch.setattr(prep, "save_gray", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("fer2013", out, csv_file=csv_file)
    partial = tmp_path / "fer2013.partial"
    assert not out.exists() and len(images_in(partial)) == 2 and list(partial.rglob(prep.TMP + "*"))
    first = (partial / "train/happy/fer0000000.png").stat().st_mtime_ns
    monkeypatch.setattr(prep, "save_gray", real_save)
    prep.prepare("fer2013", out, csv_file=csv_file)  # no --force needed: only the .partial folder exists
    assert len(images_in(out)) == 4 and not partial.exists() and not list(out.rglob(prep.TMP + "*"))
    assert (out / "train/happy/fer0000000.png").stat().st_mtime_ns == first  # finished files are not redone


def test_prepare_ferplus_majority_vote(tmp_path):
    names = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
    votes = [
        ("Training", "fer0000000.png", [2, 8, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
        ("Training", "fer0000001.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face
        ("PublicTest", "fer0000002.png", [1, 0, 0, 0, 0, 0, 0, 0, 9, 0]),  # unknown
        ("PublicTest", "fer0000003.png", [2, 4, 0, 4, 0, 0, 0, 0, 0, 0]),  # no majority
        ("PrivateTest", "fer0000004.png", [0, 1, 0, 1, 1, 0, 1, 3, 0, 1]),  # singles dropped: contempt 3 of 3
        ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # removed from FERPlus
    ]
    with open(tmp_path / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *names])
        writer.writerows([usage, image, *v] for usage, image, v in votes)
    csv_file = write_fer_csv(tmp_path / "fer2013.csv", [(0, pixels(i), "Training") for i in range(6)])
    out = tmp_path / "ferplus"
    report = prep.prepare("ferplus", out, csv_file=csv_file, labels_file=tmp_path / "fer2013new.csv")
    assert images_in(out) == ["test/contempt/fer0000004.png", "train/happiness/fer0000000.png"]
    assert report.skipped == {"FERPlus label NF": 1, "FERPlus label unknown": 1, "FERPlus label without majority": 1,
                              "no image name (removed by FERPlus)": 1}
    assert cv2.imread(str(out / "test/contempt/fer0000004.png"), cv2.IMREAD_UNCHANGED)[0, 0] == 4  # row 4's pixels


def test_prepare_names_a_missing_or_damaged_input(tmp_path, capsys):
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    for args, message in ((["--csv", str(tmp_path / "nope.csv")], f"--csv {tmp_path / 'nope.csv'}: no such file"),
                          (["--images", str(tmp_path / "bad.tar.gz")], "bad.tar.gz: not a readable .zip or .tar(.gz) "
                                                                       "archive (file could not be opened")):
        assert cli.main(["prepare", "fer2013", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_prepare_image_folders_and_archive(tmp_path):
    """A RAF-DB style release: numeric class folders, test/ used as val, a corrupt image and a stray folder."""
    src = write_image_folder(tmp_path / "raf", classes=("1", "4"), per_class=2)
    (src / "val").rename(src / "test")
    (src / "train/4/broken.jpg").write_bytes(b"not an image")
    (src / "train/extra").mkdir()
    with tarfile.open(tmp_path / "raf.tar.gz", "w:gz") as t:
        t.add(src, arcname="RAF-DB")
    for source, out in ((src, tmp_path / "a"), (tmp_path / "raf.tar.gz", tmp_path / "b")):
        report = prep.prepare("rafdb", out, images=source)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
        assert files == ["train/happiness/train_0.jpg", "train/happiness/train_1.jpg", "train/surprise/train_0.jpg",
                         "train/surprise/train_1.jpg", "val/happiness/val_0.jpg", "val/happiness/val_1.jpg",
                         "val/surprise/val_0.jpg", "val/surprise/val_1.jpg"]
        assert any("broken.jpg" in p for p in report.problems) and any("extra" in p for p in report.problems)
    assert not (tmp_path / "b.extract").exists()


def test_prepare_subject_folds(tmp_path):
    """CK+ style file names: every subject is in val of exactly one fold and never in train and val together."""
    src = tmp_path / "ckplus48"
    rng = np.random.default_rng(0)
    for s in range(1, 13):
        for k, name in enumerate(("anger", "happy")):
            (src / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(src / name / f"S{s:03d}_00{k}_0000001{k}.png"), rng.integers(0, 255, (8, 8), np.uint8))
    (src / "happy" / "notes.png").write_bytes(b"x")  # no subject in the name
    out = tmp_path / "ck"
    report = prep.prepare("ckplus", out, images=src)
    seen = []
    for fold in range(10):
        subjects = {split: {p.name.split("_")[0] for p in (out / f"fold{fold}" / split).rglob("*.png")}
                    for split in ("train", "val")}
        assert subjects["val"] and not subjects["train"] & subjects["val"]
        assert len(subjects["train"] | subjects["val"]) == 12
        seen += sorted(subjects["val"])
        assert sorted(subjects["val"]) == report.folds[f"fold{fold}"]
    assert sorted(seen) == [f"S{s:03d}" for s in range(1, 13)]
    assert report.folds["fold0"] == ["S001", "S011"] and report.skipped["file name without subject/class"] == 1
    assert (out / "fold0/val/contempt").is_dir()  # empty class folders keep class indices aligned


def test_resolve_dataset_names_the_spayolo_prepare_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAYOLO_DATASETS", str(tmp_path))
    assert resolve_dataset(str(tmp_path)) is None  # a folder: Ultralytics' own business
    assert resolve_dataset("imagenet10") is None and resolve_dataset("coco8.yaml") is None
    with pytest.raises(DatasetNotPreparedError) as error:
        resolve_dataset("fer2013.yaml")
    assert f"spayolo prepare fer2013 --csv fer2013.csv --out {tmp_path / 'fer2013'}" in str(error.value)
    (tmp_path / "fer2013/train").mkdir(parents=True)
    assert resolve_dataset("fer2013.yaml") == str(tmp_path / "fer2013")

    with pytest.raises(ValueError, match="ckplus-fold0.yaml ... data=ckplus-fold9.yaml"):
        resolve_dataset("ckplus.yaml")
    with pytest.raises(ValueError, match="fold 10"):
        resolve_dataset("ckplus-fold10.yaml")
    (tmp_path / "ckplus/fold3/train").mkdir(parents=True)
    assert resolve_dataset("ckplus-fold3.yaml") == str(tmp_path / "ckplus/fold3")

    own = tmp_path / "mine.yaml"
    own.write_text(f"path: {tmp_path / 'elsewhere'}\nnames: {{0: a, 1: b}}\n")
    with pytest.raises(DatasetNotPreparedError, match="--images <folder>"):
        resolve_dataset(own)
    (tmp_path / "elsewhere/train").mkdir(parents=True)
    assert resolve_dataset(str(own)) == str(tmp_path / "elsewhere")


@pytest.mark.slow
def test_stock_cli_resolves_dataset_names(tmp_path, monkeypatch):
    from ultralytics.engine import exporter, trainer, validator

    monkeypatch.setenv("SPAYOLO_DATASETS", str(tmp_path))
    write_image_folder(tmp_path / "fer2013", classes=("angry", "happy", "sad"), per_class=2)
    for module in (trainer, validator, exporter):  # the three places Ultralytics checks a classification dataset
        data = module.check_cls_dataset("fer2013.yaml", split="val")
        assert Path(data["train"]) == tmp_path / "fer2013" / "train" and data["nc"] == 3
    r = run_cli([yolo_cli(), "classify", "train", "model=spayolo-n.yaml", "data=ckplus-fold2.yaml", "epochs=1",
                 "imgsz=32", "device=cpu"], cwd=tmp_path, env={"SPAYOLO_DATASETS": str(tmp_path)}, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode != 0 and "Dataset 'ckplus-fold2.yaml' is not prepared" in output
    assert "spayolo prepare ckplus" in output and str(tmp_path / "ckplus" / "fold2") in output


# --- cam --------------------------------------------------------------------------------------------------------------


class TinyCAMNet(torch.nn.Module):
    """conv -> GAP -> linear: Grad-CAM reduces to CAM, relu(sum_k w_ck A_k), which the test derives by hand."""

    def __init__(self):
        super().__init__()
        head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), head)

    def forward(self, x):
        return self.model(x)


def test_grad_cam_equals_cam_for_gap_linear_head():
    torch.manual_seed(0)
    net, x = TinyCAMNet().eval(), torch.rand(2, 3, 6, 6)
    maps, probs = cam.grad_cam(net, x.clone(), cam.target_layer(net), [1, 2])
    with torch.no_grad():
        acts, w = net.model[0](x), net.model[1][2].weight[1:]
        expected = torch.relu(torch.einsum("ck,bkhw->cbhw", w, acts))
        expected = expected / expected.amax((2, 3), keepdim=True)
        assert torch.allclose(probs, net(x).softmax(1))
    assert maps.shape == (2, 2, 6, 6) and torch.allclose(maps, expected, atol=1e-6)


def test_cam_command_skips_unreadable_images(tmp_path, capsys):
    from ultralytics import YOLO

    ckpt = tmp_path / "spayolo-n.pt"
    YOLO("spayolo-n.yaml").save(ckpt)  # untrained weights suffice to exercise hooks, head output and drawing
    faces = write_image_folder(tmp_path / "faces", per_class=1, size=40) / "val"
    header = bytearray(cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    header[18:26] = (40000).to_bytes(4, "little") * 2  # a header claiming 40000x40000 pixels
    (faces / "happy" / "bomb.bmp").write_bytes(bytes(header))
    (faces / "sad" / "garbage.png").write_bytes(b"not an image")
    out = tmp_path / "cam"
    assert cli.main(["cam", "--model", str(ckpt), "--source", str(faces), "--out", str(out), "--imgsz", "32"]) == 0
    err = capsys.readouterr().err
    assert "skipping unreadable" in err and "bomb.bmp" in err and "garbage.png" in err
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"cam_{i}.png" for i in range(7)]  # one grid per class; the YAML model's names are 0..6
    assert cv2.imread(str(out / pngs[0])).shape == (128, 2 * 128, 3)  # two faces, 128-px tiles


# --- evaluate ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    """A tiny two-class image folder (train/, val/) and an untrained classifier for it, whose answers depend on the
    image (:func:`conftest.input_sensitive`)."""
    from ultralytics.nn.tasks import ClassificationModel

    root = tmp_path_factory.mktemp("eval")
    names = ("happy", "sad")
    data = write_image_folder(root / "faces", classes=names, per_class=3, size=32)
    torch.manual_seed(0)
    model = input_sensitive(ClassificationModel("spayolo-n.yaml", nc=2, verbose=False), imgsz=32)
    model.names = dict(enumerate(names))
    ckpt = root / "tiny.pt"
    torch.save({"model": model, "train_args": {"imgsz": 32, "task": "classify"}}, ckpt)
    return data, ckpt


def test_evaluate_per_class_matches_confusion(two_class, capsys):
    data, ckpt = two_class
    report = evaluate(str(ckpt), str(data), imgsz=32, batch=2, device="cpu")
    confusion = np.array(report["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() == report["images"] == 6
    assert report["support"] == {"happy": 3, "sad": 3} and report["split"] == "val" and report["tta"] == "none"
    for i, name in enumerate(("happy", "sad")):
        assert report["per_class"][name] == pytest.approx(confusion[i, i] / 3)
    assert report["top1"] == pytest.approx(np.trace(confusion) / 6, abs=1e-3)
    assert "| **all (top-1)** | 6 |" in table(report)
    assert table(report).splitlines()[0] == f"tiny.pt, TTA none: {data} val"
    assert cli.main(["evaluate", "--model", str(data / "nope.pt"), "--data", str(data)]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_evaluate_refuses_a_split_the_data_lacks(two_class, capsys):
    data, ckpt = two_class
    assert cli.main(["evaluate", "--model", str(ckpt), "--data", str(data), "--split", "test", "--imgsz", "32"]) == 2
    assert "no test/ split" in capsys.readouterr().err  # Ultralytics would quietly score val/ instead
    assert cli.main(["evaluate", "--model", str(ckpt), "--data", str(data / "nope")]) == 2  # not a download attempt
    assert f"--data {data / 'nope'}: no such folder" in capsys.readouterr().err


def test_evaluate_scores_a_folder_without_train_split_whole(two_class, tmp_path):
    data, ckpt = two_class
    only = tmp_path / "faces"
    shutil.copytree(data / "val", only / "test")
    report = evaluate(str(ckpt), str(only), split="test", batch=2, device="cpu")
    assert report["images"] == 6 and report["support"] == {"happy": 3, "sad": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]  # Ultralytics would write faces_split/ and
    # score the fifth of it that it drew as val


class _Recorder:
    """A classifier that records the views it is given and answers with their mean brightness per channel."""

    names, source = ["happy", "sad"], "recorder"

    def __init__(self, sizes=(32,)):
        self.sizes, self.calls = sizes, []

    def __call__(self, views, mirror=False):
        self.calls.append((views, mirror))
        probs = [v[..., :2, 0, 0].mean(0) for v in views.values()]  # (faces, 2) from the first two channels
        return np.mean(probs, 0)


@pytest.mark.parametrize("mode", ["none", "flip", "flip+zoom"])
def test_scoring_feeds_every_view_of_every_image(tmp_path, mode):
    """The zoomed view is cut from the decoded image (as the pipeline cuts it from the frame), not from its
    model-sized copy; mirroring is the classifier's to do, asked for with any TTA."""
    data = write_image_folder(tmp_path / "faces", per_class=1, size=64)  # scored at 32
    recorder = _Recorder()
    scored = folder_probabilities(recorder, data / "val", mode, batch=8)
    (views, mirror), = recorder.calls
    assert views[32].shape == (len(view_fractions(mode)), 2, 3, 32, 32) and mirror == (mode != "none")
    assert scored["labels"].tolist() == [0, 1] and scored["names"] == ["happy", "sad"]
    assert [Path(f).name for f in scored["files"]] == ["val_0.jpg", "val_0.jpg"]
    image = Image.fromarray(cv2.cvtColor(cv2.imread(str(data / "val" / "happy" / "val_0.jpg")), cv2.COLOR_BGR2RGB))
    np.testing.assert_allclose(views[32][0, 0], classify_transforms(32)(image).numpy(), atol=1e-6)
    if mode == "flip+zoom":
        zoomed = classify_transforms(36)(image)[:, 2:34, 2:34]  # 32 / (8/9) = 36, central 32
        np.testing.assert_allclose(views[32][1, 0], zoomed.numpy(), atol=1e-6)
        from_copy = F.interpolate(torch.from_numpy(views[32][0, :1]), size=36, mode="bilinear")[0, :, 2:34, 2:34]
        assert (from_copy - zoomed).abs().mean() > 0.01


def test_tta_views_probe_cuts_the_scorers_views_and_flush_shifts(tmp_path):
    """benchmarks/tta_views.py: its centred views are the ones `spayolo evaluate` scores, a shifted view touches the
    edges its label names, and its mirror is what the classifier is fed."""
    spec = importlib.util.spec_from_file_location("tta_views", REPO / "benchmarks" / "tta_views.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    data = write_image_folder(tmp_path / "faces", per_class=1, size=64)
    recorder = _Recorder()
    folder_probabilities(recorder, data / "val", "flip+zoom", batch=8)
    (views, _), = recorder.calls
    images = [Image.open(data / "val" / c / "val_0.jpg").convert("RGB") for c in ("happy", "sad")]
    for k, view in enumerate(probe.PIPELINE):
        np.testing.assert_allclose(probe.view_batch(images, 32, *view), views[32][k], atol=1e-6)
    resized = classify_transforms(36)(images[0]).numpy()
    np.testing.assert_allclose(probe.view_batch(images, 32, 8 / 9, 1, -1)[0], resized[:, 4:, :32], atol=1e-6)
    assert probe.label((8 / 9, 1, -1)) == "0.889 bottom-left" and probe.label((1.0, 0, 0)) == "1"
    recorder = _Recorder()
    probs = probe.view_probabilities(recorder, images)
    assert probs.shape == (len(probe.VIEWS), 2, 2, 2)
    mirrored = recorder.calls[1][0][32][0]
    np.testing.assert_array_equal(mirrored, probe.view_batch(images, 32, *probe.VIEWS[0])[..., ::-1])


def test_members_probe_scores_an_ensemble_as_evaluate_does_and_caches_each_member(two_class, tmp_path, monkeypatch):
    """benchmarks/members.py: an ensemble's row is the mean of its members' probabilities, which is what `spayolo
    evaluate --model a b` scores; a cached classifier is not run again, and other views are not read from its cache."""
    from ultralytics.nn.tasks import ClassificationModel

    spec = importlib.util.spec_from_file_location("members", REPO / "benchmarks" / "members.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    data, ckpt = two_class
    torch.manual_seed(1)
    model = input_sensitive(ClassificationModel("spayolo-n.yaml", nc=2, verbose=False), imgsz=32, seed=1)
    model.names = {0: "happy", 1: "sad"}
    second = tmp_path / "second.pt"
    torch.save({"model": model, "train_args": {"imgsz": 32, "task": "classify"}}, second)
    folder, cache, members = str(data / "val"), tmp_path / "cache", [str(ckpt), str(second)]
    probs = {m: probe.member_probabilities(m, folder, "flip", cache) for m in members}
    assert np.abs(probs[members[0]] - probs[members[1]]).max() > 1e-3  # two classifiers that disagree
    together = folder_probabilities(load_classifier(members, "torch"), folder, "flip", batch=2)["probs"]
    np.testing.assert_allclose(np.mean(list(probs.values()), 0), together, atol=1e-6)

    samples, names = folder_samples(folder)
    rows = probe.ranked(probs, np.array([c for _, c in samples]), names, (1, 2))
    assert sorted(len(r[2]) for r in rows) == [1, 1, 2] and rows == sorted(rows, key=lambda r: r[:2], reverse=True)
    report = evaluate(members, str(data), batch=2, device="cpu", tta="flip")
    assert next(r[:2] for r in rows if len(r[2]) == 2) == (report["top1"], report["mean_class_accuracy"])

    monkeypatch.setattr("spayolo.engine.scoring.folder_probabilities", lambda *a, **k: pytest.fail("ran again"))
    np.testing.assert_array_equal(probe.member_probabilities(members[0], folder, "flip", cache), probs[members[0]])
    with pytest.raises(pytest.fail.Exception, match="ran again"):
        probe.member_probabilities(members[0], folder, "none", cache)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob("*.partial"))


def test_scoring_refuses_a_model_of_other_classes(tmp_path):
    data = write_image_folder(tmp_path / "faces", classes=("angry", "calm"), per_class=1, size=32)
    with pytest.raises(UsageError, match="recorder has classes \\['happy', 'sad'\\]"):
        folder_probabilities(_Recorder(), data / "val")


def test_evaluate_tta_on_pytorch_onnx_and_an_ensemble_of_both(two_class, tmp_path, monkeypatch):
    from ultralytics import YOLO

    data, ckpt = two_class
    monkeypatch.chdir(tmp_path)
    exported = YOLO(str(ckpt)).export(format="onnx", imgsz=32, dynamic=True, opset=17)
    pt = folder_probabilities(load_classifier(str(ckpt)), data / "val", "flip", batch=2)["probs"]  # train_args: 32
    onnx = folder_probabilities(load_classifier(exported), data / "val", "flip", batch=2)["probs"]  # metadata: 32
    assert pt.shape == (6, 2) and np.ptp(pt, 0).min() > 1e-3  # the images get different answers
    np.testing.assert_allclose(onnx, pt, atol=1e-4)
    reports = [evaluate(m, str(data), batch=2, device="cpu", tta=True) for m in (str(ckpt), exported)]
    assert reports[0]["imgsz"] == reports[1]["imgsz"] == 32 and reports[0]["tta"] == "flip"
    assert reports[0]["confusion"] == reports[1]["confusion"] and reports[0]["images"] == 6
    both = evaluate([str(ckpt), exported], str(data), batch=2, device="cpu", tta=True)
    assert both["model"] == [str(ckpt), exported] and both["confusion"] == reports[0]["confusion"]


def test_evaluate_scores_a_checkpoint_without_train_args_at_64(two_class, tmp_path):
    from ultralytics.nn.tasks import load_checkpoint

    data, ckpt = two_class
    bare = tmp_path / "bare.pt"
    torch.save({"model": load_checkpoint(ckpt)[0]}, bare)
    assert evaluate(str(bare), str(data), batch=2, device="cpu")["imgsz"] == 64  # not Ultralytics' 640 default


def test_evaluate_names_a_damaged_onnx(two_class, tmp_path, capsys):
    data, _ = two_class
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    assert cli.main(["evaluate", "--model", str(tmp_path / "broken.onnx"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "broken.onnx is not a valid ONNX model" in err and "Traceback" not in err


# --- kfold ------------------------------------------------------------------------------------------------------------


def test_kfold_argument_errors(tmp_path, capsys):
    for k in range(2):
        write_image_folder(tmp_path / "tiny" / f"fold{k}", per_class=1, size=32)
    for args, message in (([str(tmp_path / "tiny"), "imgsz"], "key=value"), ([str(tmp_path)], "no fold<k>/train"),
                          ([str(tmp_path / "tiny"), "--folds", "7"], "--folds 7: the dataset has folds 0-1"),
                          ([str(tmp_path / "tiny"), "--model", str(tmp_path / "x.pt")], "x.pt"),
                          ([str(tmp_path / "tiny"), "--select", "ckplus-recipes"], "needs 3 or more folds")):
        assert cli.main(["kfold", *args]) == 2, args
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="fixed split"):
        fold_roots("fer2013")


def test_kfold_records_a_failing_fold_and_keeps_the_traceback_of_a_bug(tmp_path, capsys, monkeypatch):
    """A fold stopped by a user error ends the command with one line and exit 1; one stopped by a bug raises it again
    with its traceback. Either way kfold.json records the failure beside the finished folds."""
    from spayolo.apps import kfold

    for k in range(2):
        write_image_folder(tmp_path / "tiny" / f"fold{k}", per_class=1, size=32)
    monkeypatch.setattr(kfold, "load_yolo", lambda *args: None)  # no model is built: training never starts
    args = ["kfold", str(tmp_path / "tiny"), "--project", str(tmp_path / "runs"), "--name", "r"]
    record = tmp_path / "runs" / "r" / "kfold.json"
    monkeypatch.setattr(kfold, "train_and_score", raising(UsageError("lr0=-1: must be positive")))
    assert cli.main(args) == 1
    assert capsys.readouterr().err.startswith("spayolo kfold: fold 0 failed (lr0=-1: must be positive); finished")
    assert json.loads(record.read_text())["failed"] == {"0": "UsageError: lr0=-1: must be positive"}
    monkeypatch.setattr(kfold, "train_and_score", raising(KeyError("top1")))
    with pytest.raises(KeyError, match="top1"):
        cli.main(args)
    assert json.loads(record.read_text())["failed"] == {"0": "KeyError: 'top1'"}


def test_kfold_refuses_a_fold_without_training_images(tmp_path):
    write_image_folder(tmp_path / "fold0", per_class=1, size=32)
    shutil.rmtree(tmp_path / "fold0" / "train")
    (tmp_path / "fold0" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(MissingFileError, match="fold0/train: no images to train on"):
        train_and_score("spayolo-n.yaml", tmp_path / "fold0", tmp_path / "run", 1, {}, "flip", False)


@pytest.mark.slow
def test_kfold_scores_last_epoch_at_training_size_and_keeps_finished_folds(tmp_path, capsys):
    for k in range(3):
        write_image_folder(tmp_path / "tiny" / f"fold{k}", per_class=2, size=32)
    args = [str(tmp_path / "tiny"), "--model", "spayolo-n.yaml", "--epochs", "1", "--project", str(tmp_path / "runs"),
            "--folds", "0,1", "imgsz=32", "batch=4", "workers=0", "device=cpu", "plots=False", "amp=False", "lr0=5e-4"]
    assert cli.main(["kfold", *args]) == 0
    report = json.loads((tmp_path / "runs" / "tiny-spayolo-n" / "kfold.json").read_text())
    assert set(report["top1_per_fold"]) == {"0", "1"} and report["complete"]
    assert report["imgsz_per_fold"] == {"0": 32, "1": 32} and report["weights"] == "last epoch of each fold"
    assert report["overrides"]["lr0"] == 5e-4  # parsed as the yolo CLI does (YAML would keep "5e-4" a string)
    assert report["tta"] == "flip+zoom"  # the pipeline's default
    pooled, folds = report["pooled_tta"], [np.array(report["confusion_tta_per_fold"][k]) for k in ("0", "1")]
    assert pooled["confusion"] == (folds[0] + folds[1]).tolist() and sum(pooled["support"].values()) == 8
    assert pooled["top1"] == pytest.approx(np.trace(folds[0] + folds[1]) / 8)
    assert list(pooled["per_class"]) == report["names"] == ["happy", "sad"]
    for k, confusion in zip(("0", "1"), folds):  # each fold's TTA score is its own confusion's
        assert report["top1_tta_per_fold"][k] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)
    for key in ("top1", "top1_tta", "mean_class_accuracy"):  # mean and spread of the per-fold scores
        scores = [report[f"{key}_per_fold"][k] for k in ("0", "1")]
        assert report[f"{key}_mean"] == pytest.approx(np.mean(scores))
        assert report[f"{key}_std"] == pytest.approx(np.std(scores, ddof=1))
    # a finished fold is skipped when run again with the same arguments, retrained when they differ
    fold1 = tmp_path / "runs" / "tiny-spayolo-n" / "fold1"
    wanted = {"model": "spayolo-n.yaml", "epochs": 1, **parse_overrides(args[args.index("imgsz=32"):])}
    assert training_state(fold1, wanted) == "finished"
    assert training_state(fold1, {**wanted, "epochs": 2}) == training_state(fold1, {**wanted, "lr0": 1e-3}) == "new"
    trained = (fold1 / "weights" / "last.pt").stat().st_mtime
    # fold 2 cannot train (its train/ holds no images): fold 1 stays on record
    for image in (tmp_path / "tiny" / "fold2" / "train").rglob("*.jpg"):
        image.unlink()
    args[args.index("0,1")] = "1,2"
    assert cli.main(["kfold", *args]) == 1
    assert "fold 2 failed" in capsys.readouterr().err
    report = json.loads((tmp_path / "runs" / "tiny-spayolo-n" / "kfold.json").read_text())
    assert set(report["top1_per_fold"]) == {"1"} and not report["complete"] and "2" in report["failed"]
    assert (fold1 / "weights" / "last.pt").stat().st_mtime == trained  # scored again, not retrained


def write_subject_folds(root: Path, folds: int, per_class: int = 2) -> list[Path]:
    """Fold k's val/ holds its own images (named by fold), its train/ every other fold's, as spayolo prepare lays out
    a subject-independent split; 'fear' has no images in fold 1, as CK+ fold 9 has none."""
    rng = np.random.default_rng(0)
    for k in range(folds):
        for c, name in enumerate(("happy", "sad", "fear")):
            (root / f"fold{k}" / "train" / name).mkdir(parents=True)
            (root / f"fold{k}" / "val" / name).mkdir(parents=True)
            for i in range(0 if (k, name) == (1, "fear") else per_class):
                image = np.clip(60 + 60 * c + rng.normal(0, 10, (32, 32)), 0, 255).astype(np.uint8)
                for j in range(folds):
                    cv2.imwrite(str(root / f"fold{j}" / ("val" if j == k else "train") / name / f"s{k}_{i}.jpg"), image)
    return [root / f"fold{k}" for k in range(folds)]


def test_inner_split_holds_out_the_outer_fold(tmp_path):
    roots = write_subject_folds(tmp_path / "tiny", 4)
    split = inner_split(roots, 3, tmp_path / "inner")  # outer fold 3: validate on fold 0, train on folds 1 and 2
    files = {part: sorted(f"{p.parent.name}/{p.name}" for p in (split / part).glob("*/*")) for part in ("train", "val")}
    assert files["val"] == sorted(f"{p.parent.name}/{p.name}" for p in (roots[0] / "val").glob("*/*"))
    assert {name.split("/")[1][:2] for name in files["train"]} == {"s1", "s2"}  # no image of fold 3 or fold 0
    assert len(files["train"]) == 2 * 3 * 2 - 2  # fold 1 has no fear
    for part in ("train", "val"):  # every class folder, so a class a fold lacks keeps its index
        assert sorted(d.name for d in (split / part).iterdir()) == ["fear", "happy", "sad"]
    empty_fear = inner_split(roots, 0, tmp_path / "inner") / "val" / "fear"  # validates on fold 1, which has none
    assert empty_fear.is_dir() and not any(empty_fear.iterdir())
    assert os.path.samefile(split / "val" / "happy" / "s0_0.jpg", roots[0] / "val" / "happy" / "s0_0.jpg")


def test_select_file_errors_name_the_file_and_candidate(tmp_path):
    assert set(load_candidates("ckplus-recipes")) >= {"base", "imgsz96"}  # the built-in file, by name
    bad = tmp_path / "recipes.yaml"
    bad.write_text("candidates: {a: {}, b: {lr0: 5e-3, imgsz: 96}}")
    assert load_candidates(str(bad))["b"] == {"lr0": 0.005, "imgsz": 96}  # as the yolo CLI reads 5e-3
    for text, message in (("candidates: {a: {}}", "two or more recipes"), ("[1, 2]", "needs 'candidates:'"),
                          ("candidates: {a: {}, b: {lr: 1}}", "candidates.b: unknown argument(s) lr"),
                          ("candidates: {a: {}, b: 3}", "candidates.b must be a mapping"), ("a: [", "not valid YAML")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{bad}: ")) as error:
            load_candidates(str(bad))
        assert message in str(error.value)
    with pytest.raises(FileNotFoundError, match="built-in: ckplus-recipes"):
        load_candidates("no-such-recipes")


@pytest.mark.slow
def test_kfold_select_chooses_each_folds_recipe_without_its_images(tmp_path, capsys):
    write_subject_folds(tmp_path / "tiny", 3)
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("candidates:\n  slow: {lr0: 1.0e-5}\n  fast: {lr0: 1.0e-2, epochs: 2}\n")
    args = [str(tmp_path / "tiny"), "--model", "spayolo-n.yaml", "--epochs", "1", "--project", str(tmp_path / "runs"),
            "--folds", "1", "--select", str(recipes), "imgsz=32", "batch=4", "device=cpu", "plots=False", "amp=False"]
    assert cli.main(["kfold", *args]) == 0
    out = tmp_path / "runs" / "tiny-spayolo-n"
    report = json.loads((out / "kfold.json").read_text())
    inner = report["inner_top1_tta_per_fold"]["1"]
    assert set(inner) == {"slow", "fast"} and report["candidates"]["fast"] == {"lr0": 0.01, "epochs": 2}
    chosen = report["chosen_per_fold"]["1"]
    assert inner[chosen] == max(inner.values()) and (chosen == "slow" or inner["fast"] > inner["slow"])
    for name in ("slow", "fast"):  # trained on fold 0 only (outer 1, inner validation fold 2)
        assert (out / "inner" / name / "fold1" / "weights" / "last.pt").is_file()
    assert {p.name[:2] for p in (out / "inner-data" / "fold1" / "train").glob("*/*")} == {"s0"}
    recipe = {**parse_overrides(args[args.index("imgsz=32"):]), **report["candidates"][chosen]}
    epochs = recipe.pop("epochs", 1)
    assert training_state(out / "fold1", {"model": "spayolo-n.yaml", "epochs": epochs, **recipe}) == "finished"
    assert f"recipe {chosen}" in capsys.readouterr().out


@pytest.mark.slow
def test_kfold_fine_tunes_a_checkpoint_at_its_own_size(tmp_path):
    from ultralytics.nn.tasks import ClassificationModel

    write_image_folder(tmp_path / "tiny" / "fold0", per_class=1, size=32)
    ckpt = tmp_path / "small.pt"
    model = ClassificationModel("spayolo-n.yaml", nc=7, verbose=False)
    torch.save({"model": model, "train_args": {"imgsz": 32, "task": "classify"}}, ckpt)
    args = [str(tmp_path / "tiny"), "--model", str(ckpt), "--epochs", "1", "--project", str(tmp_path / "runs"),
            "batch=4", "workers=0", "device=cpu", "plots=False", "amp=False"]  # no imgsz=
    assert cli.main(["kfold", *args]) == 0
    (report,) = (tmp_path / "runs").glob("*/kfold.json")
    assert json.loads(report.read_text())["imgsz_per_fold"] == {"0": 32}
