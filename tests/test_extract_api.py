"""Video.extract and extract_each: any frames in any order with repeats, any subset of
representations, per-representation frame sets, GOP threads and MV-only mode all give
the same arrays as the plainest request; misuse raises ValueError or IndexError."""

from __future__ import annotations

import numpy as np
import pytest

import cvpipe

DENSE = ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated")
ALL = DENSE + ("blocks", "intra_mask")
# Across GOP boundaries, backwards, repeated, the last frame and an I-frame included.
SCATTERED = [39, 3, 3, 12, 0, 25, 11, 38, 3, 24, 23]


def assert_same(got: dict, want: dict, names=ALL, context: str = "") -> None:
    for name in names:
        if name in DENSE:
            assert got[name].dtype == want[name].dtype, f"{context} {name}"
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{context} {name}")
        else:
            assert len(got[name]) == len(want[name]), f"{context} {name}"
            for i, (a, b) in enumerate(zip(got[name], want[name])):
                assert a.dtype == b.dtype and a.shape == b.shape, f"{context} {name}[{i}]"
                for field in a.dtype.names or ():
                    np.testing.assert_array_equal(a[field], b[field], err_msg=f"{context} {name}[{i}].{field}")
                if a.dtype.names is None:
                    np.testing.assert_array_equal(a, b, err_msg=f"{context} {name}[{i}]")


@pytest.fixture(scope="module")
def video(vtest_clip) -> cvpipe.Video:
    video = cvpipe.open(vtest_clip)
    assert video.num_frames == 40 and video.gop_starts == (0, 12, 24, 36)
    return video


def test_any_frames_in_any_order_equal_one_frame_at_a_time(video):
    together = video.extract(SCATTERED, ALL)
    alone = [video.extract([frame], ALL) for frame in SCATTERED]
    for name in ALL:
        stacked = np.concatenate([a[name] for a in alone]) if name in DENSE else [a[name][0] for a in alone]
        assert_same(together, {name: stacked}, (name,), "scattered frames:")


def test_representations_together_equal_each_alone(video):
    frames = range(video.num_frames)
    together = video.extract(frames, ALL)
    for name in ALL:
        assert_same(together, video.extract(frames, (name,)), (name,), "alone:")
    assert set(together) == set(ALL)


def test_extract_each_serves_its_own_frames_per_representation(video):
    requests = {"bgr": list(video.gop_starts), "mv_accumulated": list(range(video.num_frames)),
                "residual": [5, 1, 5, 30], "blocks": [2, 30], "intra_mask": [0, 13]}
    got = video.extract_each(requests)
    assert set(got) == set(requests)
    for name, frames in requests.items():
        assert_same(got, video.extract(frames, (name,)), (name,), "extract_each:")


def test_gop_threads_change_nothing(video):
    frames = SCATTERED + list(range(video.num_frames))
    one = video.extract(frames, ALL)
    for threads in (2, 3, 8):
        assert_same(video.extract(frames, ALL, threads=threads), one, ALL, f"threads={threads}:")


def test_mv_only_mode_gives_identical_vectors_and_iframes(video):
    frames = range(video.num_frames)
    full = video.extract(frames, ("mv", "mv_accumulated", "blocks", "intra_mask"))
    fast = video.extract(frames, ("mv", "mv_accumulated", "blocks", "intra_mask"), mv_only=True)
    assert_same(fast, full, ("mv", "mv_accumulated", "blocks", "intra_mask"), "mv_only:")
    iframes = list(video.gop_starts)
    assert_same(video.extract(iframes, ("bgr",), mv_only=True), video.extract(iframes, ("bgr",)), ("bgr",), "mv_only:")


@pytest.mark.parametrize("representations, frames", [
    (("residual",), [5]), (("residual_accumulated",), [5]), (("bgr",), [5]), (("bgr",), [0, 5]),
    (("mv", "residual"), [12]),  # a residual even at an I-frame: mv_only never serves one
])
def test_mv_only_refuses_what_it_cannot_serve(video, representations, frames):
    with pytest.raises(ValueError, match="mv_only"):
        video.extract(frames, representations, mv_only=True)


def test_empty_requests_give_empty_arrays(video):
    out = video.extract([], ALL)
    for name in DENSE:
        channels = 2 if name.startswith("mv") else 3
        assert out[name].shape == (0, video.height, video.width, channels), name
    assert out["blocks"] == [] and out["intra_mask"] == []


def test_unknown_representation_raises_value_error_listing_valid_ones(video):
    with pytest.raises(ValueError, match="residual_accumulated"):
        video.extract([0], ("optical_flow",))


def test_intra_mask_marks_macroblocks_without_a_vector(video, pyav, vtest_clip):
    frames = range(video.num_frames)
    masks = video.extract(frames, ("intra_mask",))["intra_mask"]
    rows, cols = -(-video.height // 16), -(-video.width // 16)
    reference = pyav(vtest_clip).blocks
    for frame, mask in zip(frames, masks):
        assert mask.shape == (rows, cols) and mask.dtype == bool
        expected = np.ones((rows, cols), bool)
        if video.frame_types[frame] != "I":
            expected[reference[frame]["dst_y"] // 16, reference[frame]["dst_x"] // 16] = False
        np.testing.assert_array_equal(mask, expected, err_msg=f"frame {frame}")
    assert any(mask.any() for mask, kind in zip(masks, video.frame_types) if kind == "P"), \
        "no P-frame has an intra macroblock: the mask was not exercised"


def test_out_buffers_are_filled_and_returned(video):
    frames = [5, 0, 17, 17]
    fresh = video.extract(frames, DENSE)
    # Buffers that held other data (another call's) come back overwritten with this call's.
    buffers = {name: np.full_like(array, 77) for name, array in fresh.items()}
    reused = video.extract(frames, DENSE, out=buffers)
    for name in DENSE:
        assert reused[name] is buffers[name]
        assert np.array_equal(reused[name], fresh[name])


@pytest.mark.parametrize("bad", ["shape", "dtype", "readonly", "strided"])
def test_out_buffers_that_do_not_fit_raise(video, bad):
    frames = [1, 2]
    good = video.extract(frames, ("residual",))["residual"]
    buffer = {
        "shape": np.zeros((3, *good.shape[1:]), good.dtype),
        "dtype": np.zeros(good.shape, np.int32),
        "readonly": np.zeros_like(good),
        "strided": np.zeros((good.shape[0] * 2, *good.shape[1:]), good.dtype)[::2],
    }[bad]
    buffer.flags.writeable = bad != "readonly"
    with pytest.raises(ValueError, match="out\\['residual'\\] must be a writeable C-contiguous int16 array"):
        video.extract(frames, ("residual",), out={"residual": buffer})
