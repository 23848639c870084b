"""Per-person expression timelines, tables and an HTML report from a video, from the records of a live run, or for many.

    spayolo analyze clip.mp4                          # runs/analyze/clip.mp4/report.html, frames.csv, summary.csv, ...
    spayolo analyze runs/live/live.jsonl --video clip.mp4   # an earlier run's records (no re-run); faces from the video
    spayolo analyze videos/ --out runs/study           # every video of the folder, one report each, and index.html
    spayolo analyze "videos/*.mp4" --ray               # the same as Ray tasks (--ray ADDRESS: a Ray cluster)

Each report folder holds frames.csv and frames.parquet (a row per frame and face), summary.csv and summary.json (a row
per person), one timeline per person, an overview, the faces per expression, and report.html, which shows them all and
opens without a server. A recording whose report is finished is skipped (--overwrite redoes it), so a stopped run goes
on where it was. Exit codes: 0 done, 1 some recordings failed (the others are written), 2 a source, flag or output
that cannot be used (one line naming it), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spayolo.apps.args import add_pipeline_args, pipeline_kwargs, positive_float, positive_int
from spayolo.errors import UsageError

__all__ = ("main", "parse_args")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spayolo analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a video, a .jsonl of spayolo live --json records, a folder of them, or a "
                                       "quoted glob pattern")
    parser.add_argument("--out", default="runs/analyze",
                        help="folder for the reports: one sub-folder per recording (default: %(default)s)")
    parser.add_argument("--video", default=None,
                        help="for a .jsonl: the video its records were made from, to show the faces")
    parser.add_argument("--fps", type=positive_float, default=None,
                        help="for a .jsonl whose records lack media time 't': its frame rate (t = frame / fps)")
    parser.add_argument("--overwrite", action="store_true", help="redo recordings whose report is finished")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="recordings analysed at once on this machine (default: one per core)")
    parser.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                        help="run the recordings as Ray tasks: on a new local Ray instance, or on the cluster at "
                             "ADDRESS (host:port, or 'auto'); needs the ray extra")
    add_pipeline_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from spayolo.analysis.deps import require

    require("polars", "matplotlib", *(("ray",) if args.ray else ()))
    from spayolo.analysis import batch
    from spayolo.analysis.files import finished, report_folder

    files, many = batch.expand(args.source)
    if args.video and (many or files[0].suffix.lower() != ".jsonl"):
        raise UsageError(f"--video {args.video}: only for one .jsonl source, the video its records were made from")
    if args.video and not Path(args.video).is_file():
        raise UsageError(f"--video {args.video}: no such file")
    out = report_folder(args.out, "--out")
    jobs = batch.plan(files, out)
    todo = [job for job in jobs if args.overwrite or not finished(job.folder)]
    for job in jobs:
        if job not in todo:
            print(f"skipped {job.path}: {job.folder / 'report.html'} is finished (--overwrite redoes it)")
    failed = batch.run(todo, pipeline_kwargs(args), args.workers, args.ray, video=args.video, fps=args.fps)
    if failed and not many:
        raise failed[0][1]
    for job, error in failed:
        print(f"failed {job.path}: {error}", file=sys.stderr)
    if many:
        print(f"wrote {batch.write_index(out, jobs)}")
    return 1 if failed else 0
