"""spayolo live under faults and unusual inputs: a full disk, two runs writing one output, file names that are not
UTF-8, models that are not expression models, frames that change size, a stream that never answers, output to a log."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import count_frames, package_file, run_cli, small_hopper, write_video
from spayolo import cli
from spayolo.apps import sinks
from spayolo.apps.overlay import MAX_BARS, draw
from spayolo.apps.progress import Progress
from spayolo.pipeline import Face
from spayolo.sources import open_source, printable


def live(*args) -> int:
    """spayolo live in this process, headless, on the shipped ONNX pipeline."""
    return cli.main(["live", "--no-show", *map(str, args)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def partials(folder: Path) -> list[Path]:
    return list(folder.glob(".*partial*"))


# --- a full disk ------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root, as CI has)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` up to ``leave`` bytes."""
    st = os.statvfs(folder)
    (folder / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


@pytest.mark.parametrize("flag", ["--save", "--json"])
def test_a_full_disk_stops_the_run_and_keeps_the_earlier_output(tmp_path, small_disk, capsys, flag):
    source = write_video(tmp_path / "long.mp4", n=40, size=(320, 240))
    earlier = small_disk / ("out.mp4" if flag == "--save" else "out.jsonl")
    if flag == "--save":
        write_video(earlier, n=2)
    else:
        earlier.write_text('{"frame": 0, "faces": []}\n')
    before = earlier.read_bytes()
    fill(small_disk, 48 * 1024 if flag == "--save" else 6 * 1024)
    other = ["--json", ""] if flag == "--save" else ["--save", ""]
    assert live("--source", source, flag, earlier, *other, "--tta", "none") == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {flag} {earlier}: " + errors[0].split(": ", 2)[2]], captured.err
    assert "disk is full" in errors[0] or "No space left" in errors[0]
    assert f"the earlier {earlier} is kept" in errors[0] and "Traceback" not in captured.err
    assert earlier.read_bytes() == before and not partials(small_disk)
    assert "wrote" not in captured.out


class _FailingFile:
    """A text file whose writes fail with ENOSPC from the ``after``-th on."""

    def __init__(self, file, after: int):
        self.file, self.after, self.writes = file, after, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > self.after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_failed_writes_are_reported_without_root(tmp_path, capsys, monkeypatch):
    """The same promises where no tmpfs can be mounted: the disk reported full after 5 video frames, the JSON file
    refusing its 4th line."""
    source = write_video(tmp_path / "clip.mp4", n=12)
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    write_video(out, n=2)
    before = out.read_bytes()
    checks = iter([False] * 7 + [True] * 100)  # one check per output when it is chosen, then one per frame
    monkeypatch.setattr(sinks, "disk_full", lambda folder: next(checks))
    assert live("--source", source, "--save", out, "--json", js, "--tta", "none") == 1
    captured = capsys.readouterr()
    assert f"error: --save {out}: the disk is full after 5 frames; the earlier {out} is kept" in captured.err
    assert out.read_bytes() == before and count_frames(out) == 2
    assert len(read_jsonl(js)) == 6 and f"wrote {js}" in captured.out and f"wrote {out}" not in captured.out
    monkeypatch.undo()

    real_fdopen = os.fdopen
    monkeypatch.setattr(sinks.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), after=3))
    assert live("--source", source, "--save", "", "--json", js, "--tta", "none") == 1
    captured = capsys.readouterr()
    assert f"error: --json {js}: cannot be written (No space left on device) after 3 records" in captured.err
    assert len(read_jsonl(js)) == 6 and not partials(tmp_path) and "wrote" not in captured.out


def test_a_video_that_is_not_whole_is_not_moved_into_place(tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    sink = sinks.VideoSink(out, 10)
    for _ in range(3):
        sink.write(small_hopper(160, 120))
    monkeypatch.setattr(sinks.VideoSink, "_whole", lambda self: False)
    with pytest.raises(sinks.OutputError, match="could not be finished"):
        sink.close()
    assert not out.exists() and not partials(tmp_path)


# --- two runs, one output ---------------------------------------------------------------------------------------------


def test_two_runs_writing_one_output_each_write_their_own_file(tmp_path, capsys):
    js, video = tmp_path / "same.jsonl", tmp_path / "same.mp4"
    first, second = sinks.JsonSink(js), sinks.JsonSink(js)
    first_video, second_video = sinks.VideoSink(video, 10), sinks.VideoSink(video, 10)
    assert first.tmp != second.tmp and first_video.tmp != second_video.tmp
    for k in range(4):
        first.write({"run": 1, "frame": k})
        second.write({"run": 2, "frame": k, "pad": "x" * 100})
        first_video.write(small_hopper(160, 120))
        second_video.write(small_hopper(200, 150))
    second.write({"run": 2, "frame": 4})
    assert first.close() and first_video.close()
    assert [r["run"] for r in read_jsonl(js)] == [1] * 4 and count_frames(video) == 4
    assert second.close() and second_video.close()  # the last to finish wins, whole
    assert [r["frame"] for r in read_jsonl(js)] == [0, 1, 2, 3, 4] and {r["run"] for r in read_jsonl(js)} == {2}
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_WIDTH) == 200 and count_frames(video) == 4
    assert capsys.readouterr().err.count("was written by another run while this one ran") == 2
    assert not partials(tmp_path)


def test_outputs_get_the_mode_open_would_give(tmp_path):
    sink = sinks.JsonSink(tmp_path / "out.jsonl")
    sink.write({"frame": 0})
    sink.close()
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


# --- names that are not UTF-8 -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_names_that_are_not_utf8_through_the_command(tmp_path):
    """Linux allows any bytes in a name; OpenCV's reader and writer crash on one that is not UTF-8."""
    folder = tmp_path / os.fsdecode(b"fotos-\xe9")
    folder.mkdir()
    photo = folder / os.fsdecode(b"caf\xe9.jpg")
    cv2.imencode(".jpg", small_hopper())[1].tofile(str(photo))
    clip = tmp_path / os.fsdecode(b"clip-\xe9.mp4")
    write_video(tmp_path / "clip.mp4").rename(clip)
    out, js = folder / os.fsdecode(b"out-\xe9.mp4"), folder / os.fsdecode(b"out-\xe9.jsonl")
    (tmp_path / "out.mp4").symlink_to(out)  # a name the test's own OpenCV can read it by
    for source, records in ((folder, 1), (photo, 1), (clip, 3)):
        r = run_cli(["spayolo", "live", "--source", str(source), "--no-show", "--save", str(out), "--json", str(js)],
                    cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"source: {printable(source)}" in r.stdout and f"wrote {printable(out)}" in r.stdout
        lines = read_jsonl(js)
        assert len(lines) == records and count_frames(tmp_path / "out.mp4") == records
        if source != clip:
            assert os.fsencode(lines[0]["file"]) == b"caf\xe9.jpg" and len(lines[0]["faces"]) == 1
        assert not partials(folder)


# --- --min-face with MTCNN --------------------------------------------------------------------------------------------


def test_min_face_applies_to_mtcnn_in_the_command(tmp_path, capsys):
    bus = package_file("ultralytics", "assets", "bus.jpg")
    if not bus.is_file():
        pytest.skip("Ultralytics' bus.jpg is not installed")
    photo = tmp_path / "bus.jpg"
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(bus)), (405, 540)))
    sides = {}
    for min_face in (15, 40):
        js = tmp_path / f"{min_face}.jsonl"
        assert live("--source", photo, "--save", "", "--json", js, "--min-face", min_face) == 0
        boxes = [f["box"] for f in read_jsonl(js)[0]["faces"]]
        sides[min_face] = [max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
    assert min(sides[15]) < 30 and all(side >= 40 for side in sides[40]), sides


# --- models that are not expression models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_ckpt(tmp_path_factory) -> Path:
    """A stock yolov8n-cls network with its 1,000 ImageNet classes (untrained; no weights are downloaded)."""
    import torch
    from ultralytics import YOLO

    model = YOLO("yolov8n-cls.yaml").model
    model.names = {i: f"n{i:08d}" for i in range(1000)}
    path = tmp_path_factory.mktemp("imagenet") / "yolov8n-cls.pt"
    torch.save({"model": model, "train_args": {"imgsz": 64, "task": "classify"}}, path)
    return path


def test_a_classifier_that_is_not_an_expression_model_is_named(tmp_path, imagenet_ckpt, capsys):
    photo = tmp_path / "hopper.jpg"
    cv2.imwrite(str(photo), small_hopper())
    assert live("--source", photo, "--model", imagenet_ckpt, "--backend", "torch", "--save", "", "--json", "") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {imagenet_ckpt} has 1000 classes (n00000000, n00000001, n00000002, n00000003, ... "
                        f"n00000999), none of them a facial expression: its labels are not expressions (pass an "
                        f"expression classifier with --model)"]


def test_many_classes_get_a_readable_number_of_bars():
    names = [str(i) for i in range(1000)]
    probs = np.full(1000, 0.5 / 999, np.float32)
    probs[993] = 0.5
    face = Face(np.array([100, 20, 160, 90], np.float32), 1.0, None, "993", probs, names)
    frame = np.zeros((240, 320, 3), np.uint8)
    out = draw(frame, [face])
    rows = np.nonzero((out[:, 164:274] != 0).any(axis=(1, 2)))[0]  # the bar block, right of the box
    assert rows.max() < 20 + MAX_BARS * 12 + 2 and rows.min() >= 20  # MAX_BARS rows from the box's top, no more
    assert np.array_equal(out[225:], frame[225:])  # nothing drawn down to the bottom edge


# --- messages ---------------------------------------------------------------------------------------------------------


class _System:
    def __reduce__(self):
        return os.system, ("true",)


def test_model_files_that_are_no_checkpoint_are_named_for_what_they_are(tmp_path, capsys):
    import torch

    video = write_video(tmp_path / "clip.mp4")
    crafted, noise = tmp_path / "crafted.pt", tmp_path / "noise.pt"
    torch.save({"model": _System()}, crafted)
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    for model, message in ((crafted, f"{crafted} was refused by restricted loading: it references posix.system"),
                           (noise, f"{noise} is not a loadable checkpoint: the file is empty, cut short, damaged or "
                                   f"not a PyTorch checkpoint at all")):
        assert live("--source", video, "--model", model, "--save", "", "--json", "") == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "yolo predict" not in err, err
    assert live("--source", video, "--model", crafted, "--save", "", "--json", "") == 2
    assert "--trust-checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def onnx_48(tmp_path_factory) -> tuple[Path, Path]:
    """A 48 px classifier as ONNX without metadata: with a dynamic height and width (that only 48 px fits), and with
    fixed ones."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.Linear(4 * 24 * 24, 7)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1)).softmax(1)

    folder, net, x = tmp_path_factory.mktemp("onnx48"), Net().eval(), torch.zeros(1, 3, 48, 48)
    paths = folder / "dynamic.onnx", folder / "fixed.onnx"
    for path, axes in zip(paths, ({0: "batch", 2: "height", 3: "width"}, {0: "batch"})):
        torch.onnx.export(net, x, str(path), input_names=["images"], dynamic_axes={"images": axes}, dynamo=False,
                          opset_version=17)
    return paths


def test_an_onnx_model_fed_the_wrong_size_is_one_line_naming_the_flag(tmp_path, onnx_48, capsys):
    dynamic, fixed = onnx_48
    video = write_video(tmp_path / "clip.mp4")
    for model, args, message in (
        (dynamic, [], f"{dynamic} does not run on 64x64 inputs (assumed, as its file does not say its size); it "
                      f"runs on 48x48: pass --imgsz 48"),
        (dynamic, ["--imgsz", "64"], "(given with --imgsz); it runs on 48x48: pass --imgsz 48"),
        (fixed, ["--imgsz", "64"], f"{fixed} was exported for 48x48 inputs, not 64: pass --imgsz 48"),
    ):
        assert live("--source", video, "--model", model, *args, "--save", "", "--json", "") == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "imgsz=" not in err, err
    assert live("--source", video, "--model", dynamic, "--imgsz", "48", "--save", "", "--json", "") == 0


# --- frames that change size ------------------------------------------------------------------------------------------


def test_a_video_whose_frames_change_size_keeps_each_frame_whole(tmp_path, capsys):
    """Two clips of different sizes joined: each frame is processed at its own size and letterboxed into the video."""
    pytest.importorskip("av", reason="OpenCV scales every frame of a file to the first one's size; PyAV does not")
    joined = tmp_path / "joined.mjpeg"  # MJPEG as a raw stream of JPEGs: each frame keeps its own size
    with open(joined, "wb") as f:
        for w, h in [(320, 240)] * 3 + [(300, 400)] * 3:  # the portrait at half size in the middle of a black frame
            frame = np.zeros((h, w, 3), np.uint8)
            frame[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = small_hopper(w // 2, h // 2)
            f.write(cv2.imencode(".jpg", frame)[1].tobytes())
    sizes = [frame.shape[:2] for frame in open_source(joined)]
    assert sizes == [(240, 320)] * 3 + [(400, 300)] * 3
    capsys.readouterr()
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live("--source", joined, "--save", out, "--json", js) == 0
    err = capsys.readouterr().err
    assert err.count("the frame size changes at frame 3, 320x240 -> 300x400") == 1
    records = read_jsonl(js)
    assert [len(r["faces"]) for r in records] == [1] * 6
    x1, y1, x2, y2 = records[4]["faces"][0]["box"]
    assert 75 - 10 <= x1 < x2 <= 225 + 10 and 100 - 10 <= y1 < y2 <= 300 + 10  # inside the portrait, as it was coded
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)
    frames = [cap.read()[1] for _ in range(6)]
    assert frames[4][:, :30].max() < 40 and frames[4][:, -30:].max() < 40  # 300x400 letterboxed: black sides


def test_an_exif_rotated_photo_sizes_the_video_upright(tmp_path, capsys):
    from PIL import Image

    stored = Image.fromarray(small_hopper(256, 300)[..., ::-1]).transpose(Image.Transpose.ROTATE_90)  # 300 x 256
    exif = stored.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: upright again, 256 wide and 300 high
    photo = tmp_path / "turned.jpg"
    stored.save(photo, exif=exif)
    assert open_source(photo).size == (256, 300)
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live("--source", photo, "--save", out, "--json", js) == 0
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (256, 300)
    assert len(read_jsonl(js)[0]["faces"]) == 1


# --- a stream that never answers --------------------------------------------------------------------------------------


@contextlib.contextmanager
def silent_server():
    """A TCP server on this machine that accepts connections and never sends a byte: (host, port)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held, done = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        done.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # stdout is a pipe, buffered as a user's pipe or log file is: the command's lines must arrive as it prints them
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "YOLO_OFFLINE": "1",
           "YOLO_AUTOINSTALL": "False"}
    return subprocess.Popen([sys.executable, "-m", "spayolo", "live", "--no-show", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_acts_while_a_stream_does_not_answer(tmp_path, signum, code):
    with silent_server() as (host, port):
        proc = _start(["--source", f"http://{host}:{port}/live", "--timeout", "120", "--save", "", "--json", ""],
                      tmp_path)
        assert proc.stdout.readline().startswith("source: http://")
        time.sleep(1)  # OpenCV is now waiting for the server's answer
        proc.send_signal(signum)
        try:  # well before the 120 s time-out, which OpenCV would otherwise wait out
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the stop waited for OpenCV")
        assert proc.returncode in (code, -signum)


@pytest.mark.slow
def test_a_stream_that_does_not_answer_fails_after_the_timeout(tmp_path):
    with silent_server() as (host, port):
        proc = _start(["--source", f"http://{host}:{port}/live", "--timeout", "1", "--save", "", "--json", ""],
                      tmp_path)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("--timeout 1 was not applied")
    assert proc.returncode == 2 and "cannot open stream http://" in err and "--timeout 1 s" in err, err


# --- progress ---------------------------------------------------------------------------------------------------------


class _Terminal:
    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_is_drawn_on_stderr_and_only_on_a_terminal(monkeypatch):
    for tty in (True, False):
        out, err = _Terminal(tty), _Terminal(tty)
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        bar = Progress(3, "clip.mp4")
        for _ in range(3):
            bar.update()
        bar.close()
        monkeypatch.undo()
        assert out.text == "" and (("clip.mp4: 100%" in err.text and "3/3 frames" in err.text) if tty else
                                   err.text == "")


@pytest.mark.slow
def test_a_log_of_the_command_holds_no_escape_codes(tmp_path):
    """stdout redirected to a file, stderr a terminal: the bar goes to the terminal, the log stays plain."""
    video = write_video(tmp_path / "clip.mp4", n=5)
    log, (terminal, tty) = tmp_path / "log", pty.openpty()
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    with open(log, "w") as stdout:
        proc = subprocess.run([sys.executable, "-m", "spayolo", "live", "--no-show", "--source", str(video),
                               "--save", "", "--json", ""], cwd=tmp_path, env=env, stdout=stdout, stderr=tty,
                              timeout=120)
    os.close(tty)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(terminal, 4096):
            shown += chunk
    os.close(terminal)
    assert proc.returncode == 0 and "\x1b" not in log.read_text() and "\r" not in log.read_text()
    assert b"clip.mp4: 100%" in shown and b"\x1b[K" in shown


# --- what users of the fer package look for ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fer():
    from spayolo import FERPipeline

    return FERPipeline()


def test_faces_at_the_callers_own_boxes(fer):
    from spayolo.errors import UsageError

    img = small_hopper()
    boxes = [[40.0, 30.0, 200.0, 200.0], [0.0, 0.0, 60.0, 60.0]]
    faces = fer(img, boxes=boxes)
    assert [f.box.tolist() for f in faces] == boxes and all(f.landmarks is None and f.score == 1 for f in faces)
    assert not np.allclose(faces[0].probs, faces[1].probs, atol=1e-3)  # each box is classified from its own pixels
    assert [len(f) for f in fer([img, img], boxes=[boxes[:1], []])] == [1, 0]
    for bad in ([[10, 10, 5, 20]], [[1, 2, 3]], [[0, 0, float("nan"), 5]]):
        with pytest.raises(UsageError, match="boxes of frame 0"):
            fer(img, boxes=bad)


def test_top_expression_of_an_image(fer):
    img = small_hopper()
    faces = fer(img)
    assert fer.top_expression(img) == (faces[0].label, faces[0].confidence)
    two = np.zeros((300, 128 + 256, 3), np.uint8)  # a smaller face on the left, the larger one on the right
    two[:150, :128], two[:, 128:] = small_hopper(128, 150), img
    faces = fer(two)
    largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    assert len(faces) == 2 and fer.top_expression(two) == (largest.label, largest.confidence) and largest.box[0] > 128
    assert fer.top_expression(np.zeros((120, 160, 3), np.uint8)) == (None, None)


@contextlib.contextmanager
def image_server(folder: Path):
    """An HTTP server on this machine serving ``folder``: its base URL."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_an_image_given_by_url_or_data_uri(tmp_path, fer):
    import base64

    from spayolo.errors import UsageError
    from spayolo.sources import image_from_uri

    img = small_hopper()
    cv2.imwrite(str(tmp_path / "face.png"), img)  # lossless: the fetched image is the very same
    data = (tmp_path / "face.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    expected = fer(img)[0].probs
    np.testing.assert_allclose(fer(uri)[0].probs, expected, atol=1e-6)
    with image_server(tmp_path) as base:
        np.testing.assert_allclose(fer(f"{base}/face.png")[0].probs, expected, atol=1e-6)
        with pytest.raises(UsageError, match="missing.png: the server answered 404"):
            fer(f"{base}/missing.png")
        with pytest.raises(UsageError, match="larger than 0 MB"):
            image_from_uri(f"{base}/face.png", max_bytes=1000)
    with pytest.raises(UsageError, match="not an image OpenCV can decode"):
        fer("data:image/png;base64,AAAA")
    with pytest.raises(UsageError, match="a data URI is"):
        fer("data:image/png;base64")


def test_live_classifies_the_boxes_of_a_file(tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", n=4)
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text('{"frame": 1, "boxes": [[50, 20, 120, 100]]}\n{"frame": 2, "boxes": []}\n'
                     '{"frame": 9, "boxes": [[0, 0, 10, 10]]}\n')
    js = tmp_path / "out.jsonl"
    assert live("--source", video, "--boxes", boxes, "--save", "", "--json", js) == 0
    assert [[f["box"] for f in r["faces"]] for r in read_jsonl(js)] == [[], [[50, 20, 120, 100]], [], []]
    assert "warning: --boxes: 1 of its records name no frame of the source (first: 9)" in capsys.readouterr().err
    folder = tmp_path / "photos"  # a folder, by file name; spayolo's own records are read as boxes too
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(folder / name), small_hopper())
    first = tmp_path / "first.jsonl"
    assert live("--source", folder, "--save", "", "--json", first) == 0
    again = tmp_path / "again.jsonl"
    assert live("--source", folder, "--boxes", first, "--save", "", "--json", again) == 0
    before, after = read_jsonl(first), read_jsonl(again)
    assert [r["file"] for r in after] == ["a.jpg", "b.jpg"]
    assert [f["box"] for r in after for f in r["faces"]] == [f["box"] for r in before for f in r["faces"]]
    capsys.readouterr()
    boxes.write_text('{"frame": 0, "boxes": [[1, 2]]}\n')
    assert live("--source", video, "--boxes", boxes, "--save", "", "--json", "") == 2
    assert f"--boxes {boxes}:1: boxes are lists of four numbers" in capsys.readouterr().err


def test_live_looks_for_faces_in_the_region_of_interest_only(tmp_path, capsys):
    photo = tmp_path / "hopper.jpg"
    cv2.imwrite(str(photo), small_hopper())  # the face is at about (88, 59)-(176, 168)
    for roi, count in (("60,30,220,220", 1), ("0.7,0,1,1", 0), ("0,180,256,300", 0)):
        js, out = tmp_path / "out.jsonl", tmp_path / "out.mp4"
        assert live("--source", photo, "--roi", roi, "--save", out, "--json", js) == 0
        faces = read_jsonl(js)[0]["faces"]
        assert len(faces) == count, roi
        if count:
            x1, y1, x2, y2 = faces[0]["box"]
            assert 60 <= x1 < x2 <= 220 and 30 <= y1 < y2 <= 220 and x1 > 70  # in frame coordinates
    frame = cv2.VideoCapture(str(out)).read()[1]
    assert frame[180, 100:150].std() < 40 and abs(int(frame[180, 128].mean()) - 160) < 40  # the region's edge, drawn


def test_vid_stride_processes_every_nth_frame(tmp_path):
    video = write_video(tmp_path / "clip.mp4", n=10)  # 10 frames a second
    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert live("--source", video, "--vid-stride", "3", "--save", out, "--json", js) == 0
    assert [r["frame"] for r in read_jsonl(js)] == [0, 3, 6, 9]
    cap = cv2.VideoCapture(str(out))
    assert count_frames(out) == 4 and abs(cap.get(cv2.CAP_PROP_FPS) - 10 / 3) < 0.01  # same pace as the source


def _video_with_sound(path: Path, seconds: float = 2.0, fps: int = 10, rate: int = 16000) -> Path:
    import av

    with av.open(str(path), "w") as out:
        picture = out.add_stream("mpeg4", rate=fps)
        picture.width, picture.height, picture.pix_fmt = 160, 120, "yuv420p"
        sound = out.add_stream("aac", rate=rate)
        sound.layout = "mono"
        img = small_hopper(160, 120)
        for k in range(int(seconds * fps)):
            out.mux(picture.encode(av.VideoFrame.from_ndarray(np.roll(img, 3 * k, 1), format="bgr24")))
        out.mux(picture.encode())
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        for i in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, i : i + 1024], format="flt", layout="mono")
            frame.sample_rate = rate
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_the_annotated_video_keeps_the_sound(tmp_path, capsys, suffix):
    av = pytest.importorskip("av")
    source = _video_with_sound(tmp_path / "talk.mp4")
    out = tmp_path / f"out{suffix}"
    assert live("--source", source, "--save", out, "--json", "") == 0
    with av.open(str(out)) as container:
        (sound,) = container.streams.audio
        seconds = sum(float(p.duration * p.time_base) for p in container.demux(sound) if p.duration)
    assert 1.9 < seconds < 2.2 and count_frames(out) == 20 and "note:" not in capsys.readouterr().err
    assert live("--source", source, "--save", out, "--json", "", "--vid-stride", "2") == 0  # 10 frames at 5 a second
    with av.open(str(out)) as container:
        assert container.streams.audio and count_frames(out) == 10


def test_without_pyav_the_video_is_silent_and_says_so_once(tmp_path, capsys, monkeypatch):
    pytest.importorskip("av")  # to make the source
    from spayolo.apps import audio

    source = _video_with_sound(tmp_path / "talk.mp4")
    monkeypatch.setattr(audio, "has_pyav", lambda: False)  # the headers are read instead
    monkeypatch.setitem(sys.modules, "av", None)
    out = tmp_path / "out.mp4"
    assert live("--source", source, "--save", out, "--json", "") == 0
    err = capsys.readouterr().err
    assert err.count(f"note: {source} has sound; --save is written without it: install PyAV") == 1
    assert count_frames(out) == 20
    assert audio.sounds(write_video(tmp_path / "silent.mp4")) is False


@pytest.mark.slow
def test_two_processes_writing_the_same_outputs_both_finish_whole(tmp_path):
    video = write_video(tmp_path / "clip.mp4", n=30)
    out, js = tmp_path / "same.mp4", tmp_path / "same.jsonl"
    args = ["--source", str(video), "--save", str(out), "--json", str(js)]
    runs = [_start(args, tmp_path) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1000:] for _, err in results]
    assert all(f"wrote {js}" in stdout and f"wrote {out}" in stdout for stdout, _ in results)
    assert [r["frame"] for r in read_jsonl(js)] == list(range(30)) and count_frames(out) == 30
    assert not partials(tmp_path)
