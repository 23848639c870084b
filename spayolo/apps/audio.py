"""The source's sound in the annotated video: OpenCV writes pictures only, so PyAV (the ``av`` extra, FFmpeg in its
wheels) copies the audio track of a video file into the finished video, cut to the video's length.

Without PyAV the video is written silent, and a source whose file says it has sound (MP4/MOV, AVI) gets one note
saying how to keep it.
"""

from __future__ import annotations

import heapq
import re
import struct
from pathlib import Path

__all__ = ("has_pyav", "keep_audio", "sounds")

# audio codecs each container takes as they are; anything else is re-encoded to the container's usual codec
COPYABLE = {".mp4": {"aac", "mp3", "alac"}, ".mov": {"aac", "mp3", "alac", "pcm_s16le"},
            ".mkv": {"aac", "mp3", "opus", "vorbis", "flac", "pcm_s16le", "ac3"}, ".avi": {"mp3", "pcm_s16le", "ac3"}}
ENCODER = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".avi": "libmp3lame"}


def has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _mp4_sounds(file, size: int) -> bool:
    """An MP4/MOV file's movie header (moov) names a sound track handler ('soun')."""
    position = 0
    while position + 8 <= size:
        file.seek(position)
        length, kind = struct.unpack(">I4s", file.read(8))
        if length == 1:  # a 64-bit box size follows
            length = struct.unpack(">Q", file.read(8))[0]
        if kind == b"moov":
            moov = file.read(min(length, 64 << 20))
            at = moov.find(b"hdlr")
            while at >= 0:
                if moov[at + 12 : at + 16] == b"soun":
                    return True
                at = moov.find(b"hdlr", at + 4)
            return False
        if length < 8:
            return False
        position += length
    return False


def sounds(path: Path) -> bool | None:
    """Whether a video file has a sound track: PyAV asks FFmpeg; without it the headers of MP4/MOV and AVI files are
    read, and None says that the file's kind cannot be told this way."""
    if has_pyav():
        import av

        try:
            with open(path, "rb") as file, av.open(file) as container:
                return bool(container.streams.audio)
        except (OSError, av.error.FFmpegError):
            return False
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as file:
            if suffix in (".mp4", ".mov", ".m4v"):
                return _mp4_sounds(file, path.stat().st_size)
            if suffix == ".avi":  # a stream header ('strh', its size, then the stream's kind) of kind 'auds'
                return re.search(rb"strh.{4}auds", file.read(64 << 10), re.DOTALL) is not None
    except (OSError, struct.error):
        return False
    return None


def keep_audio(video: Path, source: Path, out: Path, seconds: float) -> None:
    """Write ``out``: the pictures of ``video`` (copied, not re-encoded) and the first ``seconds`` of the first audio
    track of ``source``, timed from the source's first picture. ``out`` must have ``video``'s suffix.

    Raises av.error.FFmpegError or OSError when it cannot be written; ``video`` is left as it was.
    """
    import av

    suffix = out.suffix.lower()
    with av.open(str(video)) as pictures, open(source, "rb") as file, av.open(file) as original, \
            av.open(str(out), "w") as muxed:
        picture_in = pictures.streams.video[0]
        picture_out = muxed.add_stream_from_template(picture_in)
        sound_in = original.streams.audio[0]
        first = original.streams.video[0] if original.streams.video else None
        start = float(first.start_time * first.time_base) if first is not None and first.start_time else 0.0
        if sound_in.codec_context.name in COPYABLE.get(suffix, ()):
            sound = _copied(original, sound_in, muxed.add_stream_from_template(sound_in), start, seconds)
        else:
            encoder = muxed.add_stream(ENCODER.get(suffix, "aac"), rate=sound_in.codec_context.sample_rate)
            sound = _encoded(original, sound_in, encoder, start, seconds)
        for packet in heapq.merge(_pictures(pictures, picture_in, picture_out), sound, key=_seconds):
            muxed.mux(packet)


def _seconds(packet) -> float:
    return float((packet.dts if packet.dts is not None else packet.pts or 0) * packet.time_base)


def _pictures(pictures, picture_in, picture_out):
    for packet in pictures.demux(picture_in):
        if packet.dts is not None:  # the demuxer's last, empty packet
            packet.stream = picture_out
            yield packet


def _copied(original, sound_in, sound_out, start: float, seconds: float):
    base = sound_in.time_base
    shift = round(start / base)
    for packet in original.demux(sound_in):
        if packet.pts is None:
            continue
        if float((packet.pts - shift) * base) >= seconds:
            break
        if packet.pts < shift:
            continue
        packet.pts -= shift
        packet.dts = packet.pts if packet.dts is None else packet.dts - shift
        packet.stream = sound_out
        yield packet


def _encoded(original, sound_in, encoder, start: float, seconds: float):
    for frame in original.decode(sound_in):
        t = float(frame.pts * frame.time_base) - start if frame.pts is not None else 0.0
        if t >= seconds:
            break
        if t < 0:
            continue
        frame.pts = None  # the encoder numbers its own
        yield from encoder.encode(frame)
    yield from encoder.encode()
