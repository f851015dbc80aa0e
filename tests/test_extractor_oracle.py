"""The extractor against PyAV as an independent oracle: PyAV bundles its own FFmpeg build,
so its frame types, exported motion vectors and decoded pixels check ours from outside.
Also: one stream in every container gives one result, and every output pixel is defined
at sizes that are not a multiple of 8 or 16."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import cvpipe

# AVMotionVector's fields, compared one by one (the C struct has padding bytes).
FIELDS = ("source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x", "motion_y", "motion_scale")
DENSE = ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated")
# swscale's fixed-point YUV->BGR differs by a unit or two between FFmpeg versions
# (Debian's 5.1 here, PyAV's bundled 8.x) and from exact BT.601 maths.
BGR_TOLERANCE_PYAV = 3
BGR_TOLERANCE_BT601 = 3


def bt601_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Limited-range BT.601 YUV420P -> BGR, chroma repeated over its 2x2 luma block."""
    h, w = y.shape
    up = lambda plane: np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)[:h, :w].astype(np.float64) - 128
    luma = (y.astype(np.float64) - 16) * 255 / 219
    cb, cr = up(u) * 255 / 224, up(v) * 255 / 224
    bgr = np.stack([luma + 1.772 * cb, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.402 * cr], axis=-1)
    return np.clip(np.round(bgr), 0, 255).astype(np.uint8)


def test_index_matches_pyav_decode(mpeg4_clip, pyav):
    video = cvpipe.open(mpeg4_clip)
    reference = pyav(mpeg4_clip)
    assert video.num_frames == len(reference.pict_types)
    assert video.frame_types == reference.pict_types
    assert video.gop_starts == reference.key_frames
    assert (video.height, video.width) == reference.bgr.shape[1:3]
    assert not video.has_b_frames
    for gop, start in enumerate(video.gop_starts):
        end = video.gop_starts[gop + 1] if gop + 1 < video.num_gops else video.num_frames
        assert video.gop_size(gop) == end - start
        assert video.frame_index(gop, 0) == start
        assert video.locate(end - 1) == (gop, end - start - 1)


def test_blocks_equal_pyav_vectors_field_by_field(mpeg4_clip, pyav, extracted):
    video = cvpipe.open(mpeg4_clip)
    ours = extracted(mpeg4_clip)["blocks"]
    reference = pyav(mpeg4_clip).blocks
    assert len(ours) == len(reference) == video.num_frames
    for frame, (mine, theirs) in enumerate(zip(ours, reference)):
        assert mine.dtype == cvpipe.BLOCK_DTYPE
        assert len(mine) == len(theirs), f"frame {frame}: {len(mine)} vectors, PyAV exports {len(theirs)}"
        for field in FIELDS:
            np.testing.assert_array_equal(mine[field], theirs[field], err_msg=f"frame {frame}, field {field}")
        if video.frame_types[frame] == "I":
            assert len(mine) == 0, f"I-frame {frame} carries vectors"
    assert sum(len(b) for b in ours) > 0, "no P-frame exported a vector: the comparison proved nothing"


def test_bgr_matches_pyav_frames(mpeg4_clip, pyav, extracted):
    ours = extracted(mpeg4_clip)["bgr"].astype(np.int16)
    reference = pyav(mpeg4_clip)
    # Every frame, every column: the rightmost ones are where a wrong stride shows.
    worst_pyav = np.abs(ours - reference.bgr).max(axis=(0, 1, 3))
    assert worst_pyav.max() <= BGR_TOLERANCE_PYAV, f"max |ours - PyAV bgr24| per column: {worst_pyav.tolist()}"
    bt601 = np.stack([bt601_bgr(*planes) for planes in reference.yuv]).astype(np.int16)
    worst_bt601 = np.abs(ours - bt601).max(axis=(0, 1, 3))
    assert worst_bt601.max() <= BGR_TOLERANCE_BT601, f"max |ours - BT.601(PyAV yuv)| per column: {worst_bt601.tolist()}"


def test_bgr_equals_system_ffmpeg_exactly(mpeg4_clip, extracted):
    """The ffmpeg CLI decoding with the same system libraries and converting with swscale's
    bicubic (as CoViAR does) must agree to the bit: PyAV's FFmpeg decodes a few P-frame
    pixels differently, so only this pins the exact values."""
    ours = extracted(mpeg4_clip)["bgr"]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(mpeg4_clip),
                          "-f", "rawvideo", "-pix_fmt", "bgr24", "-sws_flags", "bicubic", "-"],
                         capture_output=True, check=True).stdout
    np.testing.assert_array_equal(ours, np.frombuffer(raw, np.uint8).reshape(ours.shape))


def test_scene_cuts_give_an_irregular_gop_table(make_clip, pyav):
    clip = make_clip("vtest_cuts")
    video = cvpipe.open(clip)
    assert video.gop_starts == pyav(clip).key_frames
    sizes = [video.gop_size(g) for g in range(video.num_gops)]
    assert len(set(sizes)) > 1, f"forced key frames did not make the GOPs irregular: {sizes}"
    assert 12 not in sizes[:3], f"the forced I-frames at 5 and 7 are missing: {sizes}"


def test_gmc_clip_has_s_vops(make_clip, pyav):
    """S-VOPs are extracted as FFmpeg exports them (one averaged vector per macroblock)."""
    clip = make_clip("gmc_pan")
    video = cvpipe.open(clip)
    assert "S" in video.frame_types, f"libxvid made no S-VOP: {video.frame_types}"
    blocks = video.extract([video.frame_types.index("S")], ("blocks",))["blocks"][0]
    macroblocks = -(-video.width // 16) * -(-video.height // 16)
    assert len(blocks) == macroblocks and set(blocks["w"]) == {16}


def test_every_container_gives_identical_outputs(container_clips):
    videos = {ext: cvpipe.open(path) for ext, path in container_clips.items()}
    containers = {ext: video.container for ext, video in videos.items()}
    assert len(set(containers.values())) >= 4, f"the remuxes were not read by distinct demuxers: {containers}"
    reference = videos.pop("m4v")
    frames = range(reference.num_frames)
    expected = reference.extract(frames, DENSE + ("blocks",))
    for ext, video in videos.items():
        assert (video.width, video.height, video.frame_types, video.gop_starts) == (
            reference.width, reference.height, reference.frame_types, reference.gop_starts), ext
        assert video.fps == reference.fps, ext
        got = video.extract(frames, DENSE + ("blocks",))
        for name in DENSE:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{ext}: {name}")
        for frame, (mine, theirs) in enumerate(zip(got["blocks"], expected["blocks"])):
            for field in FIELDS:
                np.testing.assert_array_equal(mine[field], theirs[field], err_msg=f"{ext}: frame {frame}, {field}")


def _dirty_heap(pattern: int) -> None:
    """Leaves freed heap memory full of `pattern`, so that an output array left partly
    unwritten reads back differently from one run to the next. Freeing a large block
    first raises glibc's mmap threshold, so the next arrays come from the (dirty) heap."""
    for size in (1 << 23, 1 << 23, 1 << 20, 1 << 16):
        junk = np.full(size, pattern, dtype=np.uint8)
        del junk


@pytest.mark.parametrize("name", ["vtest_g12", "vtest_100x60"])
def test_every_output_pixel_is_defined(make_clip, name):
    """340 (CoViAR's width) and 100x60 are not multiples of 8: CoViAR left columns unset."""
    video = cvpipe.open(make_clip(name))
    runs = []
    for pattern in (0x00, 0xA5):
        _dirty_heap(pattern)
        # One frame per call keeps each output small enough to land in dirty memory.
        runs.append([video.extract([frame], DENSE) for frame in range(video.num_frames)])
    for frame, (first, second) in enumerate(zip(*runs)):
        for rep in DENSE:
            np.testing.assert_array_equal(first[rep], second[rep], err_msg=f"frame {frame}: {rep}")


def test_block_arrays_hold_no_uninitialised_bytes(vtest_clip):
    """BLOCK_DTYPE is an aligned struct with padding (bytes 14-15 and 34-39); an array that
    copies those bytes unset leaks memory and makes saved blocks differ run to run."""
    video = cvpipe.open(vtest_clip)
    frames = range(video.num_frames)
    runs = []
    for representations in (("blocks",), ("blocks", "bgr", "mv"), ("blocks", "residual_accumulated")):
        blocks = video.extract(frames, representations)["blocks"]
        runs.append(b"".join(array.tobytes() for array in blocks))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("tags", [("bt709", "tv"), ("bt709", "pc"), ("smpte240m", "tv")])
@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_bgr_follows_the_streams_colour_tags_as_ffmpeg_does(tmp_path, container, tags):
    vtest_source = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    if not vtest_source.exists():
        pytest.skip(f"{vtest_source} is missing (Debian package opencv-doc)")
    """Phones and most MP4s tag BT.709: converted with BT.601 that was up to 3 levels off.
    Tagged streams convert with their matrix and range, as the ffmpeg command line does;
    untagged ones (CoViAR's m4v) stay on swscale's default (the test above)."""
    matrix, value_range = tags
    clip = tmp_path / f"tagged.{container}"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(vtest_source), "-t", "1", "-vf", "scale=160:128",
                    "-c:v", "mpeg4", "-q:v", "2", "-colorspace", matrix, "-color_primaries", matrix, "-color_trc", matrix,
                    "-color_range", value_range, str(clip)], check=True)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                            "stream=color_space,color_range", "-of", "csv=p=0", str(clip)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert probe == f"{value_range},{matrix}", probe   # the container carries the tags
    video = cvpipe.open(clip)
    ours = video.extract(range(video.num_frames), ("bgr",))["bgr"]

    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(clip), "-f", "rawvideo",
                          "-pix_fmt", "bgr24", "-sws_flags", "bicubic", "-"], capture_output=True, check=True).stdout
    np.testing.assert_array_equal(ours, np.frombuffer(raw, np.uint8).reshape(ours.shape))
    # The same bitstream without the container's tags: the untagged conversion, and another result.
    untagged = tmp_path / "untagged.m4v"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(clip), "-c", "copy", "-bsf:v", "dump_extra",
                    "-f", "m4v", str(untagged)], check=True)
    plain = cvpipe.open(untagged)
    assert np.abs(ours.astype(int) - plain.extract(range(plain.num_frames), ("bgr",))["bgr"]).max() >= 2
