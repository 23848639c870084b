"""Many recordings at once: one report each and an index page comparing them, resumable (a finished report is kept).

Locally the recordings are shared out to a process pool sized to the cores this process may use; with Ray the same
work (spayolo.analysis.job.analyze_file) runs as Ray tasks, on a local instance or a cluster, and the reports come back
to this process, which writes them: the outputs are the same either way. On a cluster the inputs must be readable on
the workers under the same paths (a shared folder); spayolo must be installed there.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from spayolo.analysis.files import finished, write_folder
from spayolo.analysis.job import RECORD_SUFFIXES, VIDEO_SUFFIXES, analyze_file
from spayolo.errors import MissingFileError, SpayoloError, UsageError
from spayolo.runtime import usable_cores

__all__ = ("Job", "expand", "plan", "report_name", "run", "write_index")


@dataclass(frozen=True)
class Job:
    """A recording (video or .jsonl) and the folder its report goes to."""

    path: Path
    folder: Path


def expand(source: str) -> tuple[list[Path], bool]:
    """The recordings a source names, and whether it names a collection (folder or glob): a video or .jsonl file; a
    folder (its videos and .jsonl files); or a glob pattern (quoted, so that the shell leaves it)."""
    path = Path(source).expanduser()
    wanted = VIDEO_SUFFIXES | RECORD_SUFFIXES
    if path.is_file():
        return [path], False
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in wanted)
        if not files:
            raise UsageError(f"{path}: no video ({', '.join(sorted(VIDEO_SUFFIXES))}) or .jsonl file in this folder")
        return files, True
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        if not files:
            raise MissingFileError(f"no file matches {source}")
        return files, True
    raise MissingFileError(f"source not found: {path}")


def report_name(file: Path) -> str:
    """The report folder's name of a recording: its file name with the suffix after an underscore (clip.mp4: clip_mp4),
    so that the report of clip.mp4 and of clip.jsonl differ and neither is named as the file itself."""
    return f"{file.stem}_{file.suffix[1:]}" if file.suffix else f"{file.name}_"


def plan(files: list[Path], out: Path) -> list[Job]:
    """A job per file, its report in ``out``/report_name(file); two inputs with one name are refused."""
    seen: dict[str, Path] = {}
    for file in files:
        name = report_name(file)
        if name in seen:
            raise UsageError(f"{seen[name]} and {file} have the same name: their reports would share "
                             f"{out / name}; analyze them into different --out folders")
        if (out / name).exists() and not (out / name).is_dir():
            raise UsageError(f"--out {out}: {out / name}, the report folder of {file}, is a file")
        seen[name] = file
    return [Job(file, out / report_name(file)) for file in files]


def _local(jobs: list[Job], settings: dict, workers: int, **options) -> Iterator[tuple[Job, dict | Exception]]:
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield job, _attempt(job, settings, options)
        return
    # spawned, not forked: polars and ONNX Runtime hold threads that a fork would copy mid-flight
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(analyze_file, job.path, settings, **options): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], _outcome(future.result)


def _attempt(job: Job, settings: dict, options: dict) -> dict | Exception:
    return _outcome(lambda: analyze_file(job.path, settings, **options))


def _outcome(call) -> dict | Exception:
    """The report's files, or the user error that stopped this recording (a bug goes on up with its traceback)."""
    try:
        return call()
    except SpayoloError as error:
        return error


def _ray(jobs: list[Job], settings: dict, address: str | None, **options) -> Iterator[tuple[Job, dict | Exception]]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(analyze_file)
        pending = {task.remote(job.path, settings, **options): job for job in jobs}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ref), _outcome(lambda r=ref: ray.get(r))  # a task's error is raised as its own type too
    finally:
        if started:
            ray.shutdown()


def run(jobs: list[Job], settings: dict, workers: int | None = None, ray: str | bool | None = None,
        **options) -> list[tuple[Job, Exception]]:
    """Analyse the jobs and write each report as it comes; locally on ``workers`` processes (default: one per core),
    or as Ray tasks when ``ray`` is an address, or True for a local Ray instance. ``options`` go to analyze_file.
    Returns the jobs that failed with a user error (an unreadable video, ...), and the error."""
    workers = max(1, min(workers or usable_cores(), len(jobs)))
    if not settings.get("threads"):  # a core per recording, not every core for every recording
        settings = {**settings, "threads": 1 if ray else max(1, usable_cores() // workers)}
    outcomes = (_ray(jobs, settings, None if ray is True else ray, **options) if ray
                else _local(jobs, settings, workers, **options))
    failed = []
    for done, (job, result) in enumerate(outcomes, 1):
        if isinstance(result, Exception):
            failed.append((job, result))
            continue
        write_folder(job.folder, result)
        print(f"[{done}/{len(jobs)}] wrote {job.folder / 'report.html'}")
    return failed


def write_index(out: Path, jobs: list[Job]) -> Path:
    """index.html in ``out`` comparing every finished report among ``jobs``."""
    from spayolo.analysis.report import index_page

    entries = [(job.folder.name, json.loads((job.folder / "summary.json").read_text()))
               for job in jobs if finished(job.folder)]
    index = out / "index.html"
    tmp = out / ".index.html.partial"
    tmp.write_bytes(index_page(entries))
    os.replace(tmp, index)
    return index
