"""spayolo analyze and spayolo.analysis: the per-frame table, the per-person summary, the report, many recordings
locally and on Ray, and FERPipeline.analyze."""

from __future__ import annotations

import base64
import json
import re

import cv2
import numpy as np
import polars as pl
import pytest

from conftest import write_video
from spayolo.analysis.batch import Job, plan, report_name, run
from spayolo.analysis.deps import require
from spayolo.analysis.gallery import FaceGallery
from spayolo.analysis.job import analyze_file, analyze_records, describe
from spayolo.analysis.records import read_records
from spayolo.analysis.report import MIN_SECONDS, build_report
from spayolo.analysis.summary import summarize
from spayolo.analysis.table import MAX_STEPS, expression_names, frame_table
from spayolo.cli import main
from spayolo.errors import MissingDependencyError, MissingFileError, UsageError

NAMES = ["happy", "sad", "neutral"]


def _face(track, label, box=(10, 20, 50, 70), p=0.7):
    rest = (1 - p) / (len(NAMES) - 1)
    return {"box": list(box), "score": 0.99, "landmarks": None, "track_id": track, "label": label,
            "probs": {n: p if n == label else rest for n in NAMES}}


def _records() -> list[dict]:
    """Frames 0.1 s apart: track 1 happy, happy, sad, happy; track 2 from frame 2 on, neutral; frame 4 has no face;
    then a stall of 5 s before frame 5 (only track 2)."""
    labels = ["happy", "happy", "sad", "happy"]
    records = [{"frame": i, "time": 10 + i, "t": round(0.1 * i, 4),
                "faces": [_face(1, labels[i])] + ([_face(2, "neutral", (60, 20, 100, 70))] if i >= 2 else [])}
               for i in range(4)]
    records.append({"frame": 4, "time": 14, "t": 0.4, "faces": []})
    records.append({"frame": 5, "time": 15, "t": 5.4, "faces": [_face(2, "neutral", (60, 20, 100, 70))]})
    return records


def test_the_frame_table_has_a_row_per_frame_and_face():
    table = frame_table(_records())
    assert table.height == 4 + 2 + 1 and expression_names(table) == NAMES
    assert table.columns[:12] == ["frame", "t", "dt", "file", "track_id", "x1", "y1", "x2", "y2", "score", "label",
                                  "confidence"]
    first = table.row(0, named=True)
    assert (first["frame"], first["t"], first["track_id"], first["label"]) == (0, 0.0, 1, "happy")
    assert (first["x1"], first["y2"], first["confidence"]) == (10, 70, pytest.approx(0.7))
    assert first["happy"] == pytest.approx(0.7) and first["sad"] == pytest.approx(0.15)
    dt = dict(zip(table["frame"].to_list(), table["dt"].to_list()))
    assert dt[0] == pytest.approx(0.1) and dt[3] == pytest.approx(0.1)  # frame 4 has no face but still ends frame 3
    assert dt[5] == pytest.approx(0.1)  # the last frame lasts a typical step
    stalled = frame_table(_records()[:5] + [{**_records()[5], "frame": 5, "t": 0.5}] + _records()[5:6])
    assert stalled.filter(pl.col("frame") == 5)["dt"][0] == pytest.approx(MAX_STEPS * 0.1)  # at most MAX_STEPS steps
    by_fps = frame_table([{k: v for k, v in r.items() if k != "t"} for r in _records()], fps=20)
    assert by_fps["t"].to_list()[-1] == pytest.approx(5 / 20)
    by_clock = frame_table([{k: v for k, v in r.items() if k != "t"} for r in _records()])
    assert by_clock["t"].to_list()[0] == 10  # no media time: the processing time stands in
    assert frame_table([], NAMES).columns[-3:] == NAMES


def test_the_summary_weighs_each_frame_by_its_time():
    summary = summarize(frame_table(_records())).to_dicts()
    one, two = summary
    assert (one["track_id"], one["first_s"], one["last_s"], one["frames"]) == (1, 0.0, 0.3, 4)
    assert one["seconds_visible"] == pytest.approx(0.4) and one["dominant"] == "happy"
    assert (one["share_happy"], one["share_sad"], one["share_neutral"]) == (pytest.approx(0.75), pytest.approx(0.25), 0)
    assert one["mean_confidence"] == pytest.approx(0.7)
    # track 2: frames 2, 3 and 5, each 0.1 s (the 5 s stall follows frame 4, where nobody was seen)
    assert two["seconds_visible"] == pytest.approx(0.3) and two["share_neutral"] == 1
    untimed = [{**r, "t": None, "time": None} for r in _records()]
    shares = summarize(frame_table(untimed)).to_dicts()[0]
    assert shares["share_happy"] == pytest.approx(0.75)  # no time at all: each frame weighs one
    mixed = summarize(frame_table([{"frame": 0, "t": 0.0, "faces": [_face(None, "sad"), _face(3, "happy")]},
                                   {"frame": 1, "t": 0.1, "faces": [_face(3, "happy")]}]))
    assert mixed["track_id"].to_list() == [3, None]  # untracked faces last


def test_records_are_read_with_the_bad_line_named(tmp_path, capsys):
    path = tmp_path / "live.jsonl"
    lines = [json.dumps(r) for r in _records()]
    path.write_text("\n".join(lines) + "\n")
    assert read_records(path) == json.loads("[" + ",".join(lines) + "]")
    path.write_text("\n".join(lines) + '\n{"frame": 6, "fa')  # a run killed mid-line
    assert len(read_records(path)) == len(lines) and "cut short" in capsys.readouterr().err
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(UsageError, match=r"live\.jsonl:2: not a JSON record"):
        read_records(path)
    path.write_text('{"frame": 0}\n')
    with pytest.raises(UsageError, match="needs 'frame' and a 'faces' list"):
        read_records(path)
    with pytest.raises(MissingFileError):
        read_records(tmp_path / "none.jsonl")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_the_report_stands_alone(tmp_path):
    records = [{"frame": i, "t": i / 10, "faces": [_face(1, "happy" if i < 15 else "sad"),
                                                  *([_face(2, "neutral", (60, 20, 100, 70))] if i < 3 else [])]}
               for i in range(25)]
    table = frame_table(records)
    gallery = FaceGallery()
    frame = np.full((120, 160, 3), 90, np.uint8)
    gallery.add(frame, [type("F", (), {"track_id": 1, "label": "happy", "confidence": 0.9, "box": (10, 20, 50, 70)})],
                {"frame": 3, "t": 0.3})
    files = build_report(table, summarize(table), describe(records, "clip.mp4", NAMES), gallery)
    # track 2 (0.3 s) is seen for less than MIN_SECONDS: in the table, without a timeline
    assert MIN_SECONDS > 0.3
    assert set(files) == {"frames.csv", "frames.parquet", "summary.csv", "summary.json", "overview.png",
                          "timeline-1.png", "faces.png", "report.html"}
    html = files["report.html"].decode()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    images = _images(html)
    assert sorted(images) == sorted(files[n] for n in ("overview.png", "timeline-1.png", "faces.png"))
    assert all(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) is not None for png in images)
    assert "#2" in html and "1 more track(s)" in html
    about = json.loads(files["summary.json"])
    assert (about["source"], about["frames"], about["duration_s"], about["time"]) == ("clip.mp4", 25, 2.5, "media")
    assert [t["track_id"] for t in about["tracks"]] == [1, 2] and about["tracks"][0]["share_happy"] == 0.6
    assert pl.read_parquet(files["frames.parquet"]).equals(table)


def test_require_names_the_extra_to_install(monkeypatch, clip, capsys):
    require("polars", "matplotlib")
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find(name, *a))
    with pytest.raises(MissingDependencyError, match=r"spayolo analyze needs matplotlib.*'spayolo\[analyze\]'"):
        require("polars", "matplotlib")
    assert main(["analyze", str(clip)]) == 2 and "pip install 'spayolo[analyze]'" in capsys.readouterr().err


def test_report_names_differ_from_their_recordings(tmp_path):
    assert report_name(tmp_path / "clip.mp4") == "clip_mp4" and report_name(tmp_path / "live.jsonl") == "live_jsonl"
    with pytest.raises(UsageError, match="have the same name"):
        plan([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"], tmp_path / "out")


# --- the command and FERPipeline.analyze, on a small video -----------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n=12, size=(320, 240))


def test_the_pipeline_analyzes_a_video_in_media_time(clip):
    from spayolo.pipeline import FERPipeline

    gallery = FaceGallery()
    table = FERPipeline().analyze(clip, gallery)
    assert isinstance(table, pl.DataFrame) and table["frame"].to_list() == list(range(12))
    assert table["t"].to_list() == pytest.approx([i / 10 for i in range(12)])  # write_video plays at 10 fps
    assert table["track_id"].unique().to_list() == [1]
    best = table.sort("confidence").row(-1, named=True)
    assert gallery.best[(1, best["label"])].frame == best["frame"]


def test_analyze_writes_a_report_and_resumes(clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(clip), "--out", str(out)]) == 0
    folder = out / "clip_mp4"
    assert {p.name for p in folder.iterdir()} >= {"frames.csv", "frames.parquet", "summary.csv", "summary.json",
                                                  "report.html", "overview.png", "timeline-1.png", "faces.png"}
    assert not list(folder.glob(".*partial*")) and not (out / "index.html").exists()
    summary = pl.read_csv(folder / "summary.csv")
    assert summary["frames"].to_list() == [12] and summary["seconds_visible"][0] == pytest.approx(1.2)
    stamp = (folder / "report.html").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["analyze", str(clip), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out and (folder / "report.html").stat().st_mtime_ns == stamp
    assert main(["analyze", str(clip), "--out", str(out), "--overwrite"]) == 0
    assert (folder / "report.html").stat().st_mtime_ns != stamp


def test_analyze_reads_records_without_running_the_pipeline(clip, tmp_path):
    from spayolo.analysis.records import stream_records
    from spayolo.pipeline import FERPipeline

    records = list(stream_records(FERPipeline(), clip))
    path = tmp_path / "live.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["analyze", str(path), "--out", str(tmp_path / "out"), "--video", str(clip)]) == 0
    folder = tmp_path / "out" / "live_jsonl"
    assert (folder / "faces.png").is_file()  # faces cut from the video the records name
    same = analyze_records(records, "live.jsonl", video=clip)
    assert (folder / "summary.json").read_bytes() == same["summary.json"]


def test_analyze_refuses_what_it_cannot_use(clip, tmp_path, capsys):
    folder = clip.parent
    for argv, message in [([str(tmp_path / "none.mp4")], "source not found"),
                          ([str(folder), "--video", str(clip)], "only for one .jsonl source"),
                          ([str(tmp_path / "*.mp4")], "no file matches"),
                          ([str(clip), "--out", str(clip)], "is a file: give a folder")]:
        assert main(["analyze", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def _batch(tmp_path, clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(clip.read_bytes())
    (videos / "broken.mp4").write_text("not a video")
    return videos


def test_a_folder_gets_a_report_per_recording_and_an_index(clip, tmp_path, capsys):
    videos = _batch(tmp_path, clip)
    out = tmp_path / "out"
    assert main(["analyze", str(videos), "--out", str(out)]) == 1  # broken.mp4 failed, the others are written
    err = capsys.readouterr().err
    assert "failed" in err and "broken.mp4" in err
    index = (out / "index.html").read_text()
    assert 'href="a_mp4/report.html"' in index and 'href="b_mp4/report.html"' in index and "broken" not in index
    assert (out / "a_mp4" / "summary.json").read_bytes() == (out / "b_mp4" / "summary.json").read_bytes().replace(
        b'"b.mp4"', b'"a.mp4"')


def test_a_process_pool_writes_what_one_process_writes(clip, tmp_path):
    videos = _batch(tmp_path, clip)
    (videos / "broken.mp4").unlink()
    jobs = plan(sorted(videos.iterdir()), tmp_path / "pool")
    assert run(jobs, {}, workers=2) == []
    alone = analyze_file(videos / "a.mp4", {"threads": 1})
    assert {p.name: p.read_bytes() for p in (tmp_path / "pool" / "a_mp4").iterdir()} == alone


@pytest.mark.slow
def test_ray_tasks_write_what_the_local_run_writes(clip, tmp_path):
    ray = pytest.importorskip("ray")
    videos = _batch(tmp_path, clip)
    local = plan(sorted(videos.iterdir()), tmp_path / "local")
    remote = [Job(job.path, tmp_path / "ray" / job.folder.name) for job in local]
    failed_here = run(local, {}, workers=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # two workers on a local instance
    try:
        failed_there = run(remote, {}, ray=True)
    finally:
        ray.shutdown()
    assert [j.path.name for j, _ in failed_here] == [j.path.name for j, _ in failed_there] == ["broken.mp4"]
    assert isinstance(failed_there[0][1], UsageError)  # the task's user error comes back as itself
    for job, twin in zip(local, remote):
        if job.path.name != "broken.mp4":
            assert {p.name: p.read_bytes() for p in job.folder.iterdir()} == {
                p.name: p.read_bytes() for p in twin.folder.iterdir()}


def test_live_writes_media_time_and_a_report_at_the_end(clip, tmp_path, capsys):
    records, report = tmp_path / "live.jsonl", tmp_path / "report"
    argv = ["live", "--source", str(clip), "--no-show", "--save", "", "--json", str(records)]
    assert main([*argv, "--report", str(report)]) == 0
    assert [r["t"] for r in read_records(records)] == pytest.approx([i / 10 for i in range(12)])
    assert (report / "report.html").is_file() and (report / "faces.png").is_file()  # faces from the video file
    assert (report / "summary.json").read_bytes() == analyze_records(read_records(records), "clip.mp4",
                                                                     video=clip)["summary.json"]
    capsys.readouterr()
    assert main([*argv[:-1], "", "--report", str(tmp_path / "other")]) == 2
    assert "--report is made from the run's records" in capsys.readouterr().err and not (tmp_path / "other").exists()
