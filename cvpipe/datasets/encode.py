"""Re-encode videos to the CoViAR format: MPEG-4 Part 2, fixed GOP, no B-frames.

The encoder is the FFmpeg command line (`find_ffmpeg`): `CVPIPE_FFMPEG` or an explicit
path, else the system's `ffmpeg`, else the static binary of the `imageio-ffmpeg` wheel.
One function builds every command (`ffmpeg_command`); a file goes in by name
(`encode_file`) and numpy frames go in as rawvideo on stdin (`encode_frames`, used by
the synthetic dataset).

What an output is, by construction and then by check:
- MPEG-4 Part 2 (`-c:v mpeg4`, quality `-q:v`, CoViAR used 1), WxH (default 340x256),
  square pixels (`setsar=1`), audio, subtitles and metadata dropped;
- an I-frame every `gop` frames and P-frames between (`-g`, `-bf 0`, scene-cut I-frames
  off with a huge `-sc_threshold`; a closed GOP flag is moot without B-frames);
- one output frame per decoded source frame (`-fps_mode passthrough`, what CoViAR's
  `-f rawvideo` did), optionally only the first `max_frames`;
- bit-reproducible for a given FFmpeg build: one encoder thread (FFmpeg's mpeg4 encoder
  cuts a frame into one slice per thread, so the thread count would change the
  bitstream) and the bitexact flags (no encoder version string);
- `keep_aspect`: scaled to fit inside WxH with the display aspect kept, then padded with
  black to exactly WxH, so every output of a run has the same size.

Every output is written under a temporary name in the output folder, opened with
`cvpipe.open` and checked (size, GOP table regular except a shorter last GOP, no
B-frames, frame count), and only then renamed into place: no half-written or unchecked
file ever has the final name, and the temporary file is removed on any failure.
Batches of files (parallel, skipping up-to-date outputs) are `cvpipe.datasets.encode_batch`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

import cvpipe

FORMATS = {"m4v": ".m4v", "avi": ".avi"}
# Above any scene-change score: FFmpeg's encoders then never insert an I-frame of their own.
_NO_SCENE_CUT = "1000000000"
_STDERR_LINES = 4


class EncodeError(RuntimeError):
    """An encode that failed: `path` is the source (or output) and `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode. Every field is recorded, so changing one re-encodes."""

    width: int = 340
    height: int = 256
    keep_aspect: bool = False
    gop: int = 12
    quality: int = 1          # -q:v: 1 (best, CoViAR's) .. 31
    format: str = "m4v"       # a key of FORMATS
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"size {self.width}x{self.height}: width and height must be positive and even")
        if self.gop < 1:
            raise ValueError(f"GOP size {self.gop} must be at least 1")
        if not 1 <= self.quality <= 31:
            raise ValueError(f"quality {self.quality} must be in 1..31 (FFmpeg's -q:v)")
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames {self.max_frames} must be at least 1")

    @property
    def extension(self) -> str:
        return FORMATS[self.format]


def parse_size(text: str) -> tuple[int, int]:
    """'340x256' -> (340, 256)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 340x256") from None
    return width, height


def available_cpus() -> int:
    """CPUs this process may run on (the default number of parallel jobs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def find_ffmpeg(override: str | None = None) -> str:
    """The FFmpeg binary: `override`, else $CVPIPE_FFMPEG, else `ffmpeg` on PATH, else imageio-ffmpeg's."""
    chosen = override or os.environ.get("CVPIPE_FFMPEG")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise FileNotFoundError(f"FFmpeg binary {chosen!r} (from --ffmpeg or CVPIPE_FFMPEG) is not an executable")
        return found
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg  # only needed when there is no system FFmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _video_filter(options: EncodeOptions) -> str:
    w, h = options.width, options.height
    if not options.keep_aspect:
        return f"scale={w}:{h},setsar=1"
    # First to square pixels (a no-op for most sources), so the fit keeps the display aspect.
    return (
        "scale=trunc(iw*sar/2)*2:ih,setsar=1,"
        f"scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
        f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1"
    )


def ffmpeg_command(ffmpeg: str, input_args: Sequence[str], output: str | os.PathLike, options: EncodeOptions) -> list[str]:
    """The one FFmpeg command line for every encode; `input_args` say where frames come from."""
    limit = ["-frames:v", str(options.max_frames)] if options.max_frames else []
    return [
        ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
        *input_args,
        "-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1",
        "-vf", _video_filter(options), "-fps_mode", "passthrough", *limit,
        "-c:v", "mpeg4", "-pix_fmt", "yuv420p", "-q:v", str(options.quality),
        "-g", str(options.gop), "-bf", "0", "-sc_threshold", _NO_SCENE_CUT,
        "-threads", "1", "-flags", "+bitexact", "-fflags", "+bitexact",
        "-f", options.format, "file:" + os.fspath(output),
    ]


def _file_input(source: str | os.PathLike) -> list[str]:
    # "file:" keeps names with a colon or a leading dash from reading as protocols or options.
    return ["-nostdin", "-i", "file:" + os.path.abspath(source)]


def _rawvideo_input(width: int, height: int, fps: float, pixel_format: str) -> list[str]:
    return ["-f", "rawvideo", "-pix_fmt", pixel_format, "-video_size", f"{width}x{height}",
            "-framerate", str(fps), "-i", "pipe:0"]


class FFmpegRunner:
    """Runs FFmpeg processes and can kill every one still running (on Ctrl-C).

    One runner is shared by the encodes of a batch, so that `cancel` stops them all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for process in self._live:
                process.kill()

    def run(self, command: list[str], frames: Iterable[np.ndarray] | None = None) -> None:
        """Runs `command`, feeding `frames` to its stdin; EncodeError with FFmpeg's last lines on failure."""
        # stderr goes to a file, not a pipe: a chatty FFmpeg can then never block while we write stdin.
        with tempfile.TemporaryFile() as stderr:
            with self._lock:
                if self.cancelled:
                    raise EncodeError(command[-1], "cancelled")
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE if frames is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
                self._live.add(process)
            try:
                if frames is not None:
                    _feed(process, frames)
                returncode = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                with self._lock:
                    self._live.discard(process)
            stderr.seek(0)
            lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
        if self.cancelled:
            raise EncodeError(command[-1], "cancelled")
        if returncode != 0:
            tail = " | ".join(lines[-_STDERR_LINES:]) or "no message"
            raise EncodeError(command[-1], f"ffmpeg exited with status {returncode}: {tail}")


def _feed(process: subprocess.Popen, frames: Iterable[np.ndarray]) -> None:
    try:
        for frame in frames:
            process.stdin.write(np.ascontiguousarray(frame).data)
    except BrokenPipeError:
        pass  # FFmpeg quit early; its exit status and stderr say why
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass


def check_output(path: str | os.PathLike, options: EncodeOptions, expected_frames: int | None = None) -> cvpipe.Video:
    """Opens an encoded file with `cvpipe.open` and checks it is what `options` ask for.

    Raises EncodeError listing every problem: wrong size, B-frames, a GOP table that is
    not an I-frame every `options.gop` frames (the last GOP may be shorter), no frames,
    more than `max_frames`, or a frame count other than `expected_frames`.
    """
    try:
        video = cvpipe.open(path)
    except (OSError, ValueError) as e:
        raise EncodeError(path, f"the output does not open: {e}") from None
    problems = []
    if (video.width, video.height) != (options.width, options.height):
        problems.append(f"size {video.width}x{video.height}, asked {options.width}x{options.height}")
    if video.has_b_frames or set(video.frame_types) - {"I", "P"}:
        problems.append(f"frame types {''.join(sorted(set(video.frame_types)))}, asked I and P only")
    if video.num_frames == 0:
        problems.append("no frames")
    expected_starts = tuple(range(0, video.num_frames, options.gop))
    if video.gop_starts != expected_starts:
        first = next((i for i, (a, b) in enumerate(zip(video.gop_starts, expected_starts)) if a != b),
                     min(len(video.gop_starts), len(expected_starts)))
        problems.append(f"GOP table is not regular every {options.gop} frames (GOP {first} differs; "
                        f"starts {list(video.gop_starts[:first + 2])}...)")
    if options.max_frames is not None and video.num_frames > options.max_frames:
        problems.append(f"{video.num_frames} frames, asked at most {options.max_frames}")
    if expected_frames is not None and video.num_frames != expected_frames:
        problems.append(f"{video.num_frames} frames decodable, {expected_frames} sent")
    if problems:
        raise EncodeError(path, "; ".join(problems))
    return video


def _encode_atomically(output: Path, command_for: Callable[[Path], list[str]], options: EncodeOptions,
                       runner: FFmpegRunner, frames: Iterable[np.ndarray] | None = None,
                       frames_sent: Callable[[], int] | None = None) -> cvpipe.Video:
    """Encodes to a temporary name beside `output`, checks it, then renames it to `output`.

    `frames_sent`, asked after the encode, is how many frames went in (None: unknown).
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name in the same folder (so the rename is atomic); FFmpeg creates it
    # with the usual permissions, which mkstemp's 0600 would not give.
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        runner.run(command_for(tmp), frames)
        video = check_output(tmp, options, frames_sent() if frames_sent else None)
        os.replace(tmp, output)
        return video
    except EncodeError as e:
        raise EncodeError(output, e.reason) from None  # the temporary name means nothing to the caller
    finally:
        tmp.unlink(missing_ok=True)


def encode_file(source: str | os.PathLike, output: str | os.PathLike, options: EncodeOptions = EncodeOptions(),
                ffmpeg: str | None = None, runner: FFmpegRunner | None = None) -> cvpipe.Video:
    """Re-encodes one video file to `output`, atomically and checked; returns the opened output.

    Raises:
        EncodeError: naming the source: it is missing, FFmpeg failed (the reason holds its
            last error lines), or the output failed `check_output`.
    """
    source, binary = Path(source), find_ffmpeg(ffmpeg)
    if not source.is_file():
        raise EncodeError(source, "no such file" if not source.exists() else "not a regular file")
    try:
        return _encode_atomically(Path(output), lambda tmp: ffmpeg_command(binary, _file_input(source), tmp, options),
                                  options, runner or FFmpegRunner())
    except EncodeError as e:
        raise EncodeError(source, e.reason) from None


def encode_frames(frames: Iterable[np.ndarray], output: str | os.PathLike, options: EncodeOptions = EncodeOptions(),
                  *, fps: float = 25.0, channel_order: str = "bgr", ffmpeg: str | None = None) -> cvpipe.Video:
    """Encodes numpy frames to an MPEG-4 Part 2 file, atomically and checked; returns it opened.

    Args:
        frames: (H, W, 3) uint8 arrays, all the same size, in `channel_order` ("bgr", as
            `Video.extract` returns, or "rgb"). They are scaled to options' size if needed.
        output: the file to write (its format is `options.format`, whatever its name).
        fps: the frame rate recorded in the stream.

    Raises:
        ValueError: no frames, or a frame that is not (H, W, 3) uint8 of the first frame's size.
        EncodeError: FFmpeg failed or the output failed `check_output` (including a frame count
            other than the number of frames given).
    """
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order {channel_order!r} is not 'bgr' or 'rgb'")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"{output}: no frames to encode")
    shape = first.shape
    if first.dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"{output}: frames must be (H, W, 3) uint8, got {first.dtype} {shape}")
    count = 0

    def checked() -> Iterable[np.ndarray]:
        nonlocal count
        for frame in itertools.chain([first], iterator):
            if frame.shape != shape or frame.dtype != np.uint8:
                raise ValueError(f"{output}: frame {count} is {frame.dtype} {frame.shape}, the first was uint8 {shape}")
            count += 1
            yield frame

    binary = find_ffmpeg(ffmpeg)
    inputs = _rawvideo_input(shape[1], shape[0], fps, channel_order + "24")
    return _encode_atomically(Path(output), lambda tmp: ffmpeg_command(binary, inputs, tmp, options), options,
                              FFmpegRunner(), frames=checked(), frames_sent=lambda: count)
