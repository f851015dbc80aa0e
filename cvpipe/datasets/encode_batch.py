"""Re-encode many videos into one folder: `cvpipe encode`'s engine.

Sources are encoded in parallel (threads, each driving one FFmpeg through
`cvpipe.datasets.encode.encode_file`, which writes atomically and checks every output) with a
progress bar; one result per source says encoded, skipped or failed and why.

An output is OUT/<source stem><format extension>. Two sources that would share an
output name both fail, naming each other, and so does a source that is its own output.

Up to date: after an output is renamed into place, a state record
OUT/.cvpipe-encode/<output name>.json keeps the source's path, size and mtime, the
options, and the output's size and mtime. An output is skipped only when all of them
still match, so a changed source or option, or a touched or replaced output, re-encodes.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from cvpipe.datasets.encode import EncodeError, EncodeOptions, FFmpegRunner, available_cpus, encode_file, find_ffmpeg

STATE_DIR = ".cvpipe-encode"


@dataclass(frozen=True)
class EncodeResult:
    """What happened to one source in `encode_many`."""

    source: str
    output: str
    status: str               # "encoded", "skipped" or "failed"
    reason: str = ""          # why it failed
    bytes: int = 0            # the output's size (encoded or skipped)
    frames: int = 0           # frames in the output (encoded only)
    seconds: float = 0.0


def output_path(source: str | os.PathLike, out_dir: str | os.PathLike, options: EncodeOptions,
                tree: str | os.PathLike | None = None) -> Path:
    """Where `encode_many` writes a source: OUT / (source stem + the format's extension),
    or, with `tree`, OUT / (the source's path relative to `tree`, extension replaced), the
    layout the dataset manifests expect (<class>/<video>)."""
    if tree is None:
        return Path(out_dir) / (Path(source).stem + options.extension)
    relative = Path(os.path.relpath(Path(source).resolve(), Path(tree).resolve()))
    if relative.parts[0] == os.pardir:
        raise ValueError(f"'{source}' is not under the tree root '{tree}'")
    return Path(out_dir) / relative.with_suffix(options.extension)


def _state_path(output: Path) -> Path:
    return output.parent / STATE_DIR / (output.name + ".json")


def _wanted_state(source: Path, options: EncodeOptions) -> dict:
    stat = source.stat()
    return {"source": str(source.resolve()), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "options": asdict(options)}


def _is_up_to_date(source: Path, output: Path, options: EncodeOptions) -> bool:
    try:
        state = json.loads(_state_path(output).read_text(encoding="utf-8"))
        out_stat = output.stat()
        wanted = _wanted_state(source, options)
    except (OSError, ValueError):
        return False
    return (
        {key: state.get(key) for key in wanted} == wanted
        and state.get("output_size") == out_stat.st_size
        and state.get("output_mtime_ns") == out_stat.st_mtime_ns
    )


def _record_state(source: Path, output: Path, options: EncodeOptions) -> None:
    out_stat = output.stat()
    state = _wanted_state(source, options) | {"output_size": out_stat.st_size, "output_mtime_ns": out_stat.st_mtime_ns}
    path = _state_path(output)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _encode_one(source: Path, output: Path, options: EncodeOptions, ffmpeg: str, force: bool,
                runner: FFmpegRunner) -> EncodeResult:
    start = time.perf_counter()
    try:
        if not force and source.is_file() and _is_up_to_date(source, output, options):
            return EncodeResult(str(source), str(output), "skipped", bytes=output.stat().st_size)
        # A stale record must not vouch for the new file if we die between rename and record.
        _state_path(output).unlink(missing_ok=True)
        video = encode_file(source, output, options, ffmpeg, runner)
        _record_state(source, output, options)
        return EncodeResult(str(source), str(output), "encoded", bytes=output.stat().st_size,
                            frames=video.num_frames, seconds=time.perf_counter() - start)
    except EncodeError as e:
        return EncodeResult(str(source), str(output), "failed", reason=e.reason, seconds=time.perf_counter() - start)
    except OSError as e:
        return EncodeResult(str(source), str(output), "failed", reason=f"{type(e).__name__}: {e}",
                            seconds=time.perf_counter() - start)


def _name_clashes(sources: Sequence[Path], outputs: Sequence[Path]) -> dict[int, str]:
    """Reasons for the sources that cannot be written: shared output names, or output == source."""
    by_output: dict[Path, list[int]] = {}
    for i, out in enumerate(outputs):
        by_output.setdefault(out.resolve(), []).append(i)
    reasons = {}
    for out, indices in by_output.items():
        for i in indices:
            others = [str(sources[j]) for j in indices if j != i]
            if others:
                reasons[i] = f"output {outputs[i]} would also be written from {', '.join(others)}"
    for i, (src, out) in enumerate(zip(sources, outputs)):
        if i not in reasons and src.resolve() == out.resolve():
            reasons[i] = "the output would overwrite the source"
    return reasons


def encode_many(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                options: EncodeOptions = EncodeOptions(), *, jobs: int | None = None, ffmpeg: str | None = None,
                force: bool = False, progress: bool = True,
                tree: str | os.PathLike | None = None) -> list[EncodeResult]:
    """Re-encodes `sources` into `out_dir` in parallel, one result per source, in order.

    A source that fails (cannot be decoded, or its output fails the check) is reported
    in its result and the others go on. Two sources whose outputs would have the same
    name both fail before anything is encoded. Up-to-date outputs are skipped unless
    `force`. `tree` keeps each output's path relative to that root (see output_path).
    On KeyboardInterrupt every running FFmpeg is killed, the temporary files
    are removed, and the interrupt is raised again.
    """
    binary = find_ffmpeg(ffmpeg)
    jobs = jobs or available_cpus()
    paths = [Path(s) for s in sources]
    outputs = [output_path(s, out_dir, options, tree) for s in paths]
    results: list[EncodeResult | None] = [None] * len(paths)
    for i, reason in _name_clashes(paths, outputs).items():
        results[i] = EncodeResult(str(paths[i]), str(outputs[i]), "failed", reason=reason)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    runner = FFmpegRunner()
    todo = [i for i, r in enumerate(results) if r is None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(paths), initial=len(paths) - len(todo), unit="video", desc="encode",
                 disable=None if progress else True) as bar:
        futures = {pool.submit(_encode_one, paths[i], outputs[i], options, binary, force, runner): i for i in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if result.status == "failed":
                    bar.write(f"failed: {result.source}: {result.reason}")
                bar.update()
        except BaseException:
            runner.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def summary(results: Sequence[EncodeResult], seconds: float) -> str:
    """One line of counts, time and bytes, then one line per failure."""
    counts = {status: sum(r.status == status for r in results) for status in ("encoded", "skipped", "failed")}
    written = sum(r.bytes for r in results if r.status == "encoded")
    total = sum(r.bytes for r in results if r.status != "failed")
    lines = [
        f"encoded {counts['encoded']}, skipped {counts['skipped']} (up to date), failed {counts['failed']} "
        f"in {seconds:.1f} s; wrote {written / 2**20:.1f} MiB, outputs total {total / 2**20:.1f} MiB"
    ]
    lines += [f"  failed: {r.source}: {r.reason}" for r in results if r.status == "failed"]
    return "\n".join(lines)
