"""CoViAR's representations, bit-exact: a small numpy reference of CoViAR's rules
(REFERENCE.md section 2) fed with PyAV's exported vectors must reproduce our mv,
mv_accumulated, residual and residual_accumulated exactly; synthetic pans give motion
known in closed form; and `cvpipe.coviar` keeps CoViAR's API, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

import cvpipe
from cvpipe import coviar


def truncated_motion(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """motion / motion_scale rounded toward zero, per block (x, y)."""
    scale = blocks["motion_scale"].astype(np.int64)
    trunc = lambda m: np.sign(m) * (np.abs(m) // scale)
    return trunc(blocks["motion_x"].astype(np.int64)), trunc(blocks["motion_y"].astype(np.int64))


def source_map(blocks: np.ndarray, height: int, width: int) -> np.ndarray:
    """CoViAR's painting rule as a map: for each pixel of a P-frame, the (y, x) it comes
    from in the previous frame; itself where no vector paints it.

    Each vector moves the rectangle [dst - w/2, dst + w/2) x [dst - h/2, dst + h/2) from
    src = dst + trunc(motion / scale); a pixel is painted only if both it and its source
    lie inside the frame; vectors with src == dst are skipped; later vectors win.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    source = np.stack([ys, xs], axis=-1)
    mx, my = truncated_motion(blocks)
    for block, dx, dy in zip(blocks, mx, my):
        if dx == 0 and dy == 0:
            continue
        half_w, half_h = int(block["w"]) // 2, int(block["h"]) // 2
        by, bx = np.mgrid[int(block["dst_y"]) - half_h:int(block["dst_y"]) + half_h,
                          int(block["dst_x"]) - half_w:int(block["dst_x"]) + half_w]
        sy, sx = by + dy, bx + dx
        inside = ((by >= 0) & (by < height) & (bx >= 0) & (bx < width)
                  & (sy >= 0) & (sy < height) & (sx >= 0) & (sx < width))
        source[by[inside], bx[inside]] = np.stack([sy[inside], sx[inside]], axis=-1)
    return source


def coviar_reference(frame_types: str, vectors: list[np.ndarray], bgr: np.ndarray) -> dict[str, np.ndarray]:
    """CoViAR's four motion/residual representations for every frame of a clip."""
    n, height, width = bgr.shape[:3]
    grid = np.stack(np.mgrid[0:height, 0:width], axis=-1)  # (y, x) per pixel
    out = {name: np.zeros((n, height, width, c), np.int16)
           for name, c in (("mv", 2), ("mv_accumulated", 2), ("residual", 3), ("residual_accumulated", 3))}
    bgr = bgr.astype(np.int16)
    for t in range(n):
        if frame_types[t] == "I":
            track, iframe = grid, bgr[t]  # every pixel comes from itself in the I-frame
            continue
        source = source_map(vectors[t], height, width)
        track = track[source[..., 0], source[..., 1]]  # follow this frame's vectors back
        out["mv"][t] = (grid - source)[..., ::-1]      # dst - src, channel 0 = x
        out["mv_accumulated"][t] = (grid - track)[..., ::-1]
        out["residual"][t] = bgr[t] - bgr[t - 1][source[..., 0], source[..., 1]]
        out["residual_accumulated"][t] = bgr[t] - iframe[track[..., 0], track[..., 1]]
    return out


def test_pyav_sources_are_truncated_motion(mpeg4_clip, pyav):
    """The oracle's own consistency: FFmpeg's src = dst + trunc(motion / scale), the rule
    REFERENCE.md states, on every exported vector."""
    for frame, blocks in enumerate(pyav(mpeg4_clip).blocks):
        if len(blocks):
            mx, my = truncated_motion(blocks)
            np.testing.assert_array_equal(blocks["src_x"], blocks["dst_x"] + mx, err_msg=f"frame {frame}")
            np.testing.assert_array_equal(blocks["src_y"], blocks["dst_y"] + my, err_msg=f"frame {frame}")


def test_representations_equal_numpy_reference(mpeg4_clip, pyav, extracted):
    """Our pixels are the source (so colour conversion cannot matter), PyAV's vectors the motion."""
    ours = extracted(mpeg4_clip)
    video = cvpipe.open(mpeg4_clip)
    expected = coviar_reference(video.frame_types, pyav(mpeg4_clip).blocks, ours["bgr"])
    for name, want in expected.items():
        got = ours[name]
        assert got.dtype == np.int16 and got.shape == want.shape, name
        wrong = np.argwhere(np.any(got != want, axis=-1))
        assert len(wrong) == 0, (f"{name}: {len(wrong)} pixels differ, first (frame, y, x) {wrong[0].tolist()}: "
                                 f"got {got[tuple(wrong[0])].tolist()}, want {want[tuple(wrong[0])].tolist()}")
    assert np.any(expected["mv"] != 0), "no pixel moved: the comparison proved nothing"


def test_residual_reconstructs_the_frame(mpeg4_clip, extracted):
    """BGR_t = residual + BGR_{t-1} motion-compensated by mv, and = residual_accumulated +
    the I-frame displaced by mv_accumulated, on every pixel of every P-frame."""
    ours = extracted(mpeg4_clip)
    frame_types = cvpipe.open(mpeg4_clip).frame_types
    bgr = ours["bgr"].astype(np.int16)
    height, width = bgr.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width]
    for t, kind in enumerate(frame_types):
        if kind == "I":
            iframe = bgr[t]
            for name in ("mv", "mv_accumulated", "residual", "residual_accumulated"):
                assert not np.any(ours[name][t]), f"I-frame {t}: {name} is not zero"
            continue
        mv, acc = ours["mv"][t], ours["mv_accumulated"][t]
        previous = bgr[t - 1][ys - mv[..., 1], xs - mv[..., 0]]
        np.testing.assert_array_equal(ours["residual"][t] + previous, bgr[t], err_msg=f"frame {t}")
        origin = iframe[ys - acc[..., 1], xs - acc[..., 0]]
        np.testing.assert_array_equal(ours["residual_accumulated"][t] + origin, bgr[t], err_msg=f"frame {t}")


def _interior(array: np.ndarray, step: tuple[int, int], k: int) -> np.ndarray:
    """Pixels whose source stays inside the frame for all k steps, away from the border
    macroblocks (whose content enters from outside the frame)."""
    height, width = array.shape[:2]
    margin = 16
    return array[margin:height - margin - abs(step[1]) * k, margin:width - margin - abs(step[0]) * k]


def test_integer_pan_gives_closed_form_motion(pan_clip):
    """Frame n shows the texture at offset (2n, n): MV (-2, -1), accumulated (-2k, -k)."""
    video = cvpipe.open(pan_clip)
    out = video.extract(range(video.num_frames), ("mv", "mv_accumulated", "blocks"))
    assert video.frame_types.count("P") >= 20
    for frame in range(video.num_frames):
        _, k = video.locate(frame)
        if k == 0:
            continue
        mv = _interior(out["mv"][frame], (2, 1), 1)
        acc = _interior(out["mv_accumulated"][frame], (2, 1), k)
        assert np.all(mv == (-2, -1)), f"frame {frame}: {np.unique(mv.reshape(-1, 2), axis=0).tolist()}"
        assert np.all(acc == (-2 * k, -k)), f"frame {frame}: {np.unique(acc.reshape(-1, 2), axis=0).tolist()}"


def test_halfpel_pan_truncates_toward_zero(halfpel_pan_clip):
    """+1.5 px and -0.5 px per frame: half-pel vectors (3, -1)/2; CoViAR keeps the integer
    part, toward zero: source offset (+1, 0), so MV (-1, 0) and accumulated (-k, 0)."""
    video = cvpipe.open(halfpel_pan_clip)
    out = video.extract(range(video.num_frames), ("mv", "mv_accumulated", "blocks"))
    for frame in range(video.num_frames):
        _, k = video.locate(frame)
        if k == 0:
            continue
        blocks = out["blocks"][frame]
        inner = ((blocks["dst_x"] > 16) & (blocks["dst_x"] < video.width - 16)
                 & (blocks["dst_y"] > 16) & (blocks["dst_y"] < video.height - 16))
        subpel = np.stack([blocks["motion_x"], blocks["motion_y"], blocks["motion_scale"]], axis=1)[inner]
        assert np.all(subpel == (3, -1, 2)), f"frame {frame}: the encoder did not find the half-pel pan"
        assert np.all(_interior(out["mv"][frame], (1, 0), 1) == (-1, 0)), f"frame {frame}"
        assert np.all(_interior(out["mv_accumulated"][frame], (1, 0), k) == (-k, 0)), f"frame {frame}"


# ---- cvpipe.coviar: CoViAR's loader API ------------------------------------------------

def test_coviar_api_shapes_dtypes_and_values(container_clips):
    """The CoViAR calls on every container, against Video.extract."""
    for ext, path in container_clips.items():
        video = cvpipe.open(path)
        assert coviar.get_num_frames(path) == video.num_frames, ext
        assert coviar.get_num_gops(path) == video.num_gops, ext
        for gop, pos in ((0, 0), (1, 5), (video.num_gops - 1, video.gop_size(video.num_gops - 1) - 1)):
            frame = video.frame_index(gop, pos)
            everything = video.extract([frame], ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated"))
            for representation, accumulate, name, dtype, channels in (
                    (coviar.IFRAME, False, "bgr", np.uint8, 3),
                    (coviar.MV, False, "mv", np.int32, 2), (coviar.MV, True, "mv_accumulated", np.int32, 2),
                    (coviar.RESIDUAL, False, "residual", np.int32, 3),
                    (coviar.RESIDUAL, True, "residual_accumulated", np.int32, 3)):
                got = coviar.load(path, gop, pos, representation, accumulate)
                assert got.dtype == dtype and got.shape == (video.height, video.width, channels), (ext, name)
                np.testing.assert_array_equal(got, everything[name][0], err_msg=f"{ext} {name} at ({gop}, {pos})")


def test_coviar_last_frame_is_decodable(vtest_clip, pyav):
    """CoViAR never flushed its parser and lost every file's last frame."""
    reference = pyav(vtest_clip)
    assert coviar.get_num_frames(vtest_clip) == len(reference.pict_types)
    last_gop = coviar.get_num_gops(vtest_clip) - 1
    last_pos = len(reference.pict_types) - 1 - reference.key_frames[-1]
    frame = coviar.load(vtest_clip, last_gop, last_pos, coviar.IFRAME, False)
    assert np.abs(frame.astype(np.int16) - reference.bgr[-1]).max() <= 3
    with pytest.raises(IndexError):
        coviar.load(vtest_clip, last_gop, last_pos + 1, coviar.IFRAME, False)


@pytest.mark.parametrize("gop, pos", [(-1, 0), (99, 0), (0, -1), (0, 12), (3, 4)])
def test_coviar_bad_indices_raise_index_error(vtest_clip, gop, pos):
    """vtest_g12 has GOPs 0-3 of 12, 12, 12 and 4 frames."""
    assert [cvpipe.open(vtest_clip).gop_size(g) for g in range(4)] == [12, 12, 12, 4]
    with pytest.raises(IndexError, match=str(vtest_clip)):
        coviar.load(vtest_clip, gop, pos, coviar.MV, True)


@pytest.mark.parametrize("representation", [3, -1, "mv"])
def test_coviar_bad_representation_raises_value_error(vtest_clip, representation):
    with pytest.raises(ValueError, match="representation"):
        coviar.load(vtest_clip, 0, 1, representation, False)
