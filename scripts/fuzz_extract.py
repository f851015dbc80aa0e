#!/usr/bin/env python3
"""Bounded fuzzing of the native extractor with mutants of real clips.

    fuzz_extract.py corpus DIR [--seed S] [--count N]   make DIR/clean/* and DIR/mutants/*
    fuzz_extract.py run FILE...                          (child) extract each file, one line each
    fuzz_extract.py check FILE_OR_DIR... [--batch B] [--timeout T]

`check` extracts every file in child processes, B files per child. A child must exit
normally: a Python exception from a bad file is the expected outcome, a signal, a
sanitizer abort, a hang past T seconds or a missing outcome line is a failure. A batch
that fails is re-run one file per child so the summary names the culprit. Exit status 0
when every file passed. tests/test_fuzz.py runs it under pytest, and
scripts/sanitizer-check.sh under AddressSanitizer and UBSan.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
MUTATIONS = ("truncate", "bitflip", "zero", "duplicate")
# Exceptions a bad file may raise: the extractor's own, clear ValueErrors.
EXPECTED_ERRORS = {"InvalidVideoError", "UnsupportedVideoError"}
ALL_REPRESENTATIONS = ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated", "blocks", "intra_mask")
MV_ONLY_REPRESENTATIONS = ("mv", "mv_accumulated", "blocks")


# ---- corpus ---------------------------------------------------------------------------

def make_clean_clips(out: Path) -> list[Path]:
    """Three small MPEG-4 Part 2 clips from real footage: a raw m4v as CoViAR makes it,
    an odd-sized AVI with 4MV, and an MP4 (headers in extradata, index at the end)."""
    if not VTEST.exists():
        sys.exit(f"{VTEST} is missing: install Debian's opencv-doc")
    out.mkdir(parents=True, exist_ok=True)
    recipes = {
        "vtest.m4v": ["-t", "2.4", "-vf", "scale=340:256,setsar=1:1", "-f", "m4v"],
        "vtest_mv4.avi": ["-t", "2", "-vf", "scale=100:60,setsar=1:1", "-flags", "+mv4", "-g", "8"],
        "vtest_qpel.mp4": ["-t", "2", "-vf", "scale=176:144,setsar=1:1", "-flags", "+mv4+qpel"],
    }
    clips = []
    for name, options in recipes.items():
        clips.append(out / name)
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(VTEST), "-an",
                        "-c:v", "mpeg4", "-q:v", "1", "-bf", "0", *options, str(clips[-1])], check=True)
    return clips


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    # A quarter of the mutations hit the first 512 bytes: container and VOL headers.
    span = min(len(buf), 512) if rng.random() < 0.25 else len(buf)
    if kind == "truncate":
        return bytes(buf[: int(rng.integers(0, span))])
    if kind == "bitflip":
        for position in rng.integers(0, span, size=int(rng.integers(1, 51))):
            buf[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == "zero":
        start = int(rng.integers(0, span))
        end = min(len(buf), start + int(rng.integers(1, 4097)))
        buf[start:end] = bytes(end - start)
    elif kind == "duplicate":
        start, length, at = int(rng.integers(0, len(buf))), int(rng.integers(1, 8193)), int(rng.integers(0, span))
        buf[at:at] = buf[start:start + length]
    return bytes(buf)


def make_corpus(directory: Path, seed: int, count: int) -> list[Path]:
    """`count` mutants of the clean clips, the same bytes for the same seed."""
    clips = make_clean_clips(directory / "clean")
    mutants_dir = directory / "mutants"
    shutil.rmtree(mutants_dir, ignore_errors=True)
    mutants_dir.mkdir(parents=True)
    sources = [clip.read_bytes() for clip in clips]
    mutants = []
    for i in range(count):
        clip, kind = clips[i % len(clips)], MUTATIONS[(i // len(clips)) % len(MUTATIONS)]
        rng = np.random.default_rng([seed, i])
        mutants.append(mutants_dir / f"{i:03d}-{clip.stem}-{kind}{clip.suffix}")
        mutants[-1].write_bytes(mutate(sources[i % len(clips)], kind, rng))
    return clips + mutants


# ---- child ----------------------------------------------------------------------------

def extract_everything(path: Path) -> str:
    """Opens the file and extracts every GOP with every representation, again in MV-only
    mode, then all GOPs in one threaded call; returns a one-line outcome. A failing GOP
    does not stop the others."""
    import cvpipe

    video = cvpipe.open(path)
    errors = []
    for gop in range(video.num_gops):
        frames = range(video.gop_starts[gop], video.gop_starts[gop] + video.gop_size(gop))
        for representations, mv_only in ((ALL_REPRESENTATIONS, False), (MV_ONLY_REPRESENTATIONS, True)):
            try:
                video.extract(frames, representations, mv_only=mv_only)
            except (cvpipe.InvalidVideoError, cvpipe.UnsupportedVideoError) as error:
                errors.append(f"{type(error).__name__}: {error}")
    try:  # all GOPs at once over two threads: the parallel path sees the damage too
        video.extract(range(video.num_frames), ALL_REPRESENTATIONS, threads=2)
    except (cvpipe.InvalidVideoError, cvpipe.UnsupportedVideoError) as error:
        errors.append(f"{type(error).__name__}: {error}")
    outcome = f"{video.num_frames} frames, {video.num_gops} GOPs"
    if errors:
        return f"gop-errors\t{outcome}; {len(errors)} failed extractions, first {errors[0]}"
    return f"ok\t{outcome}"


def run_child(files: list[str]) -> int:
    for name in files:
        try:
            line = extract_everything(Path(name))
        except Exception as error:  # every Python exception is an outcome; the parent judges its type
            line = f"{type(error).__name__}\t{error}"
        print(f"{name}\t{line}".replace("\n", " "), flush=True)
    return 0


# ---- parent ---------------------------------------------------------------------------

def child_command(files: list[str]) -> list[str]:
    # Keep -S (no site) when the parent has it: the sanitizer run uses it to hide the
    # editable install from the interpreter so the sanitized module is the one imported.
    # faulthandler prints the Python stack of a child that dies by a signal.
    flags = ["-X", "faulthandler"] + (["-S"] if sys.flags.no_site else [])
    return [sys.executable, *flags, os.path.abspath(__file__), "run", *files]


def run_batch(files: list[str], timeout: float) -> tuple[dict[str, str], str | None]:
    """Outcome per file, and why the child failed (None if it exited normally)."""
    try:
        proc = subprocess.run(child_command(files), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return parse_outcomes(expired.stdout or ""), f"timed out after {timeout} s"
    outcomes = parse_outcomes(proc.stdout)
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        tail = "\n    ".join(proc.stderr.strip().splitlines()[-25:])
        return outcomes, f"{how}\n    {tail}"
    return outcomes, None


def parse_outcomes(stdout: str | bytes) -> dict[str, str]:
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    return {line.split("\t", 1)[0]: line.split("\t", 1)[1] for line in stdout.splitlines() if "\t" in line}


def check(paths: list[Path], batch: int, timeout: float) -> int:
    from tqdm import tqdm

    files = []
    for path in paths:
        files += sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else [str(path)]
    failures: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    batches = [files[i:i + batch] for i in range(0, len(files), batch)]
    for chunk in tqdm(batches, desc="fuzz batches", unit="batch", file=sys.stderr):
        got, failure = run_batch(chunk, timeout)
        if failure is not None and len(chunk) > 1:
            got = {}
            for name in chunk:  # one per child, to name the file that kills it
                single, failure = run_batch([name], timeout)
                got.update(single)
                if failure is not None:
                    failures[name] = failure
        elif failure is not None:
            failures[chunk[0]] = failure
        outcomes.update(got)
    for name in files:
        kind = outcomes.get(name, "").split("\t", 1)[0]
        if name not in failures and kind not in ({"ok", "gop-errors"} | EXPECTED_ERRORS):
            failures[name] = f"unexpected outcome: {outcomes.get(name, 'no outcome line')!r}"
        print(f"{name}\t{outcomes.get(name, 'FAILED')}")
    counts = Counter(outcomes.get(name, "FAILED").split("\t", 1)[0] for name in files)
    print(f"summary: {len(files)} files, " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
          f"; {len(failures)} failures")
    for name, why in failures.items():
        print(f"FAILURE {name}: {why}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="make clean clips and seeded mutants in DIR")
    corpus.add_argument("directory", type=Path)
    corpus.add_argument("--seed", type=int, default=0, help="mutation seed (default 0)")
    corpus.add_argument("--count", type=int, default=240, help="mutants to make (default 240)")
    run = sub.add_parser("run", help="(child) extract each file and print one outcome line per file")
    run.add_argument("files", nargs="+")
    chk = sub.add_parser("check", help="extract files (or every file under directories) in child processes")
    chk.add_argument("paths", nargs="+", type=Path)
    chk.add_argument("--batch", type=int, default=20, help="files per child process (default 20)")
    chk.add_argument("--timeout", type=float, default=60,
                     help="seconds per child before it counts as a hang (default 60)")
    args = parser.parse_args(argv)
    if args.command == "corpus":
        made = make_corpus(args.directory, args.seed, args.count)
        print(f"{len(made)} files in {args.directory}")
        return 0
    if args.command == "run":
        return run_child(args.files)
    return check(args.paths, args.batch, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
