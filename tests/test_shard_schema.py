"""The shard schema on its own: quantisation, member encodings, names, header, sampling.

No Ray and no extraction here (tests/test_shard_job.py round-trips real videos); one
test checks that the module loads without cvpipe's compiled extension, as the trainer
needs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from cvpipe.shards import codec
from cvpipe.shards import schema as ss

# --- quantisation -----------------------------------------------------------------------

def _coviar_mv_reference(v: int) -> int:
    # CoViAR's data loader: (img * (127.5 / 20)).astype(np.int32), += 128, clip to 0..255.
    # Python's int() of a float truncates toward zero exactly as astype(int32) does.
    return min(max(int(v * 127.5 / 20) + 128, 0), 255)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_quantise_mv_matches_coviar_over_the_whole_range(dtype):
    values = np.arange(-300, 301, dtype=dtype)
    expected = np.array([_coviar_mv_reference(int(v)) for v in values], dtype=np.uint8)
    assert np.array_equal(codec.quantise_mv(values), expected)


def test_quantise_mv_truncates_negative_products_toward_zero():
    # -1 * 6.375 = -6.375: truncation gives -6 (122), floor would give -7 (121).
    mv = np.array([-1, -3, -20, -21, 1, 3, 20, 21, 0], dtype=np.int16)
    assert codec.quantise_mv(mv).tolist() == [122, 109, 1, 0, 134, 147, 255, 255, 128]


def test_quantise_mv_extremes_do_not_overflow():
    mv = np.array([np.iinfo(np.int16).min, np.iinfo(np.int16).max, -4096, 4096], dtype=np.int16)
    assert codec.quantise_mv(mv).tolist() == [0, 255, 0, 255]
    assert codec.quantise_mv(np.array([-(2**31), 2**31 - 1], dtype=np.int32)).tolist() == [0, 255]


def test_quantise_residual_matches_coviar():
    res = np.arange(-300, 301, dtype=np.int16)
    assert np.array_equal(codec.quantise_residual(res), np.clip(res.astype(np.int64) + 128, 0, 255).astype(np.uint8))
    assert codec.quantise_residual(np.array([-255, -128, -127, 0, 127, 128, 255], np.int32)).tolist() == \
        [0, 0, 1, 128, 255, 255, 255]


def test_quantise_refuses_floats():
    with pytest.raises(TypeError, match="integers"):
        codec.quantise_mv(np.array([0.5]))
    with pytest.raises(TypeError, match="integers"):
        codec.quantise_residual(np.array([0.5]))


# --- member encodings -------------------------------------------------------------------

def _smooth(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth uint8 image: lossy codecs approximate it well, lossless ones must match it."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    y, x = np.mgrid[0:h, 0:w]
    phases = rng.uniform(0, 2 * np.pi, c)
    return np.stack([127 + 100 * np.sin(x / 7 + y / 11 + p) for p in phases], axis=-1).round().astype(np.uint8)


def _planar(predictor: str, colour: bool, level: int = 3) -> codec.Encoding:
    return codec.Encoding("planar.npy.zst", level=level, predictor=predictor, colour=colour)


LOSSLESS = [(kind, encoding) for kind, encodings in {
    ss.IFRAME: [codec.Encoding("png", level=0), codec.Encoding("png", level=9), codec.Encoding("delta.npy.zst", level=3),
                codec.Encoding("npy.zst", level=3), _planar("grad", True, 6), _planar("up", False), _planar("none", True)],
    ss.MV: [codec.Encoding("npy.zst", level=1), codec.Encoding("npy.zst", level=19), codec.Encoding("npy"),
            codec.Encoding("png", level=6), codec.Encoding("delta.npy.zst", level=9), _planar("none", False, 9),
            _planar("grad", False)],
    ss.RESIDUAL: [codec.Encoding("npy.zst", level=3), codec.Encoding("npy"), codec.Encoding("png", level=1),
                  codec.Encoding("delta.npy.zst", level=1), _planar("up", True, 6), _planar("grad", True)],
}.items() for encoding in encodings]


@pytest.mark.parametrize("kind,encoding", LOSSLESS, ids=lambda v: getattr(v, "extension", v))
def test_lossless_encodings_round_trip_exactly(kind, encoding):
    array = np.random.default_rng(1).integers(0, 256, (37, 53, ss.CHANNELS[kind]), dtype=np.uint8)
    data = codec.encode_member(kind, array, encoding)
    back = codec.decode_member(kind, data, encoding)
    assert back.dtype == np.uint8 and back.flags.c_contiguous
    assert np.array_equal(back, array)
    stored, undo = codec.read_member(kind, data, encoding)  # what the trainer's workers hand over
    assert stored.shape == (ss.CHANNELS[kind], 37, 53) and undo == encoding.undo
    assert np.array_equal(codec.unfilter_planes(stored, undo), array.transpose(2, 0, 1))


def test_the_filters_are_pngs_up_loco_is_gradient_and_webps_green_subtraction():
    planes = np.random.default_rng(2).integers(0, 256, (3, 5, 6), dtype=np.uint8)
    x = planes.astype(np.int64)
    up = codec.filter_planes(planes, codec.Undo.UP)
    assert np.array_equal(up[:, 0], planes[:, 0]) and np.array_equal(up[:, 1:], (x[:, 1:] - x[:, :-1]) % 256)
    grad = codec.filter_planes(planes, codec.Undo.UP | codec.Undo.LEFT)
    prediction = x[:, 1:, :-1] + x[:, :-1, 1:] - x[:, :-1, :-1]  # left + above - above-left
    assert np.array_equal(grad[:, 1:, 1:], (x[:, 1:, 1:] - prediction) % 256)
    colour = codec.filter_planes(planes, codec.Undo.COLOUR)
    assert np.array_equal(colour[[0, 2]], (x[[0, 2]] - x[1]) % 256) and np.array_equal(colour[1], planes[1])
    everything = codec.Undo.UP | codec.Undo.LEFT | codec.Undo.COLOUR
    assert np.array_equal(codec.unfilter_planes(codec.filter_planes(planes, everything), everything), planes)


def test_iframe_png_is_a_true_rgb_image():
    """Stored BGR frames must view with the right colours in any image viewer."""
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in BGR
    png = codec.encode_member(ss.IFRAME, bgr, codec.Encoding("png", level=1))
    import io

    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        assert image.getpixel((0, 0)) == (0, 0, 255)


def test_jpeg_iframes_are_close_to_the_source():
    bgr = _smooth((64, 80, 3), seed=2)
    encoding = codec.Encoding("jpeg", quality=codec.JPEG_QUALITY)
    back = codec.decode_member(ss.IFRAME, codec.encode_member(ss.IFRAME, bgr, encoding), encoding)
    assert back.shape == bgr.shape
    assert np.abs(back.astype(int) - bgr).mean() < 2.0
    assert not encoding.lossless


def test_encodings_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="cannot be stored as 'jpeg'"):
        codec.encode_member(ss.MV, np.zeros((4, 4, 2), np.uint8), codec.Encoding("jpeg", quality=90))
    with pytest.raises(ValueError, match=r"\(H, W, 2\) uint8"):
        codec.encode_member(ss.MV, np.zeros((4, 4, 3), np.uint8), codec.DEFAULT_ENCODINGS[ss.MV])
    with pytest.raises(ValueError, match="uint8"):
        codec.encode_member(ss.RESIDUAL, np.zeros((4, 4, 3), np.int16), codec.DEFAULT_ENCODINGS[ss.RESIDUAL])
    with pytest.raises(ValueError, match="level 30"):
        codec.Encoding("npy.zst", level=30)
    with pytest.raises(ValueError, match="quality is required"):
        codec.Encoding("jpeg")
    with pytest.raises(ValueError, match="not one of"):
        codec.Encoding("webp")


# --- member names -----------------------------------------------------------------------

def test_field_names_round_trip_and_split_like_webdataset():
    from webdataset.tariterators import base_plus_ext

    cases = [(ss.IFRAME, 3, 0, "png"), (ss.MV, 3, 5, "npy.zst"), (ss.RESIDUAL, 12345, 123, "npy")]
    for kind, gop, pos, ext in cases:
        name = ss.field_name(kind, gop, pos, ext)
        assert ss.parse_field(name) == (kind, gop, pos, ext)
        # WebDataset's own split: the key before the first dot, the field after it.
        assert base_plus_ext(f"v_Archery_g01_c02.{name}") == ("v_Archery_g01_c02", name)
    assert ss.field_name(ss.MV, 3, 5, "npy.zst") == "g0003.p05.mv.npy.zst"
    assert ss.field_name(ss.IFRAME, 3, 0, "png") == "g0003.iframe.png"


def test_bad_names_and_keys_are_refused():
    for key in ("a.b", "", "a/b", "a b"):
        with pytest.raises(ValueError, match="sample key"):
            ss.check_key(key)
    with pytest.raises(ValueError, match=r"P positions \(>= 1\), not 0"):
        ss.field_name(ss.MV, 0, 0, "npy")
    with pytest.raises(ValueError, match="position 0 of its GOP"):
        ss.field_name(ss.IFRAME, 0, 2, "png")
    for name in ("json", "g3.iframe.png", "g0003.p5.mv.npy", "g0003.p05.flow.npy"):
        with pytest.raises(ValueError, match="not a shard member"):
            ss.parse_field(name)


# --- positions ----------------------------------------------------------------------------

def test_position_specs():
    assert ss.select_positions("all", 12) == list(range(1, 12))
    assert ss.select_positions("every2", 12) == [1, 3, 5, 7, 9, 11]
    assert ss.select_positions("every3", 12) == [1, 4, 7, 10]
    assert ss.select_positions(" 5, 1,11 ", 12) == [1, 5, 11]
    # A shorter last GOP stores what exists.
    assert ss.select_positions("1,5,11", 6) == [1, 5]
    assert ss.select_positions("all", 1) == []
    assert ss.parse_positions("EVERY02") == "every2"
    for bad in ("0,3", "every0", "some", "1,x"):
        with pytest.raises(ValueError):
            ss.parse_positions(bad)


# --- header -------------------------------------------------------------------------------

def _header(num_frames: int = 40, gop_starts=(0, 12, 24, 36), spec: str = "all", **changes) -> ss.Header:
    sizes = [b - a for a, b in zip(gop_starts, [*gop_starts[1:], num_frames])]
    fields = dict(
        id="v_Archery_g01_c02", label=3, label_name="Archery", split="train", source="/data/a.m4v",
        num_frames=num_frames, width=340, height=256, fps=(30000, 1001), gop_starts=tuple(gop_starts),
        positions=tuple(tuple(ss.select_positions(spec, s)) for s in sizes), position_spec=spec,
        encodings=dict(codec.DEFAULT_ENCODINGS))
    return ss.Header(**(fields | changes))


def test_header_json_round_trip():
    header = _header(spec="every2")
    header = header.with_checksums({f: f.encode() for f in header.fields()})
    back = ss.Header.from_json(header.to_json())
    assert back == header
    assert back.to_json() == header.to_json()
    assert str(back.frame_rate) == "30000/1001"
    assert back.gop_size(3) == 4 and back.positions[3] == (1, 3)


def test_every_member_is_checked_against_its_crc32_on_decode():
    """One flipped bit anywhere in any member is an error naming the member, for every
    encoding (zstd and raw npy have no check of their own: without the header's CRC-32,
    199 of 200 flipped residual bits decoded silently)."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (256, 340, 3), dtype=np.uint8)
    mv = rng.integers(0, 256, (256, 340, 2), dtype=np.uint8)
    for encodings in (codec.DEFAULT_ENCODINGS, {ss.IFRAME: codec.Encoding("jpeg", quality=90),
                                             ss.MV: codec.Encoding("npy"), ss.RESIDUAL: codec.Encoding("npy")}):
        header = _header(num_frames=2, gop_starts=(0,), encodings=dict(encodings))
        members = {name: codec.encode_member(ss.parse_field(name)[0], bgr if ".iframe." in name else
                                          (mv if ".mv." in name else bgr), encodings[ss.parse_field(name)[0]])
                   for name in header.fields()}
        header = ss.Header.from_json(header.with_checksums(members).to_json())
        for name, data in members.items():
            assert header.decode(name, data).shape[:2] == (256, 340)
            for _ in range(20):
                bad = bytearray(data)
                bad[rng.integers(len(bad))] ^= 1 << rng.integers(8)
                with pytest.raises(ValueError, match=f"member '{re.escape(name)}' is corrupt"):
                    header.decode(name, bytes(bad))


def test_version_1_headers_read_without_checksums_and_later_ones_need_them():
    v1 = _header(schema_version=1)
    assert ss.Header.from_json(v1.to_json()) == v1
    name = v1.field(ss.MV, 0, 1)
    data = codec.encode_member(ss.MV, np.zeros((256, 340, 2), np.uint8), v1.encodings[ss.MV])
    assert v1.decode(name, data).shape == (256, 340, 2)   # nothing to check it against
    with pytest.raises(ValueError, match="checksums do not list its members"):
        ss.Header.from_json(_header().to_json())
    v2 = _header(schema_version=2, encodings={ss.IFRAME: codec.Encoding("png", level=1),
                                              ss.MV: codec.Encoding("npy.zst", level=3),
                                              ss.RESIDUAL: codec.Encoding("npy.zst", level=3)})
    v2 = v2.with_checksums({f: f.encode() for f in v2.fields()})
    assert ss.Header.from_json(v2.to_json()) == v2 and v2.fields()[0] == "g0000.iframe.png"
    written = json.loads(v2.to_json())  # schemas 2 and 3 wrote {field: CRC-32}, 4 a list in fields() order
    written["checksums"] = dict(reversed(list(zip(v2.fields(), v2.checksums))))
    assert ss.Header.from_json(json.dumps(written)) == v2
    with pytest.raises(ValueError, match="schema version 5"):
        ss.Header.from_json(_header(schema_version=1).to_json().replace(b'"schema_version":1', b'"schema_version":5'))


def test_header_fields_list_every_member_in_tar_order():
    header = _header(num_frames=14, gop_starts=(0, 12, 13))  # GOP sizes 12, 1, 1
    fields = header.fields()
    assert fields[0] == "g0000.iframe.planar.npy.zst"
    assert fields[1:3] == ["g0000.p01.mv.planar.npy.zst", "g0000.p01.res.planar.npy.zst"]
    assert fields[-2:] == ["g0001.iframe.planar.npy.zst", "g0002.iframe.planar.npy.zst"]
    assert len(fields) == 3 + 2 * 11 == header.num_members
    assert [header.index(f) for f in fields] == list(range(len(fields)))  # what checksums and layout are listed by
    with pytest.raises(KeyError, match="not stored"):
        header.field(ss.MV, 1, 1)
    for other in ("g0000.p01.mv.npy.zst", "g0001.p01.mv.planar.npy.zst", "json", "g0009.iframe.planar.npy.zst"):
        with pytest.raises(KeyError):
            header.index(other)


def test_header_refuses_other_versions_and_bad_content():
    raw = json.loads(_header().to_json())
    with pytest.raises(ValueError, match="schema version 99"):
        ss.Header.from_json(json.dumps(raw | {"schema_version": 99}))
    with pytest.raises(ValueError, match="malformed"):
        ss.Header.from_json(json.dumps({k: v for k, v in raw.items() if k != "gop_starts"}))
    with pytest.raises(ValueError, match="cannot store positions"):
        _header(positions=((1, 12), (), (), ()))
    with pytest.raises(ValueError, match="sample key"):
        _header(id="a.b")


# --- sampling ----------------------------------------------------------------------------

def _coviar_gop_pos(frame: int, kind: str, gop_size: int = 12) -> tuple[int, int]:
    # CoViAR's rule on a regular GOP table: divmod by the GOP size; for MV and residual an
    # I-frame (position 0) is replaced by the last frame of the previous GOP.
    gop, pos = divmod(frame, gop_size)
    if kind == ss.IFRAME:
        return gop, 0
    return (gop - 1, gop_size - 1) if pos == 0 else (gop, pos)


def test_serve_with_every_position_is_coviars_mapping():
    header = _header(num_frames=48, gop_starts=(0, 12, 24, 36))
    for frame in range(1, 48):
        for kind in ss.KINDS:
            assert header.serve(frame, kind) == _coviar_gop_pos(frame, kind), (frame, kind)
    assert header.serve(0, ss.MV) == (0, 1)   # CoViAR never samples frame 0 for MV


def test_serve_picks_the_nearest_stored_position_in_the_gop():
    header = _header(num_frames=48, gop_starts=(0, 12, 24, 36), spec="1,5,11")
    assert header.serve(13, ss.MV) == (1, 1)
    assert header.serve(15, ss.RESIDUAL) == (1, 1)   # position 3: 1 and 5 are equally near, the earlier wins
    assert header.serve(16, ss.MV) == (1, 5)
    assert header.serve(24, ss.MV) == (1, 11)         # an I-frame: the previous GOP's last frame
    assert header.serve(32, ss.MV) == (2, 5)          # position 8: a tie between 5 and 11
    assert header.serve(33, ss.MV) == (2, 11)
    assert header.serve(32, ss.IFRAME) == (2, 0)


def test_serve_in_a_gop_without_p_frames_uses_the_nearest_stored_frame():
    header = _header(num_frames=25, gop_starts=(0, 12, 24))  # the last GOP is a lone I-frame
    assert header.serve(24, ss.MV) == (1, 11)      # CoViAR's rule already lands in GOP 1
    lone = _header(num_frames=13, gop_starts=(0, 12), spec="every2")
    assert lone.serve(12, ss.RESIDUAL) == (0, 11)
    only_iframes = _header(num_frames=2, gop_starts=(0, 1))
    with pytest.raises(LookupError, match="no mv member"):
        only_iframes.serve(1, ss.MV)
    with pytest.raises(IndexError):
        header.serve(25, ss.IFRAME)


# Worked by hand from CoViAR's rule: span = (n - 1) / segments, with n one less for MV and
# residual (frame 0 has no motion) and their indices shifted by one; ends rounded half to
# even. n = 24, MV: span 22/3; segment 1 = [round(7.33), round(14.67)) + 1 = [8, 16).
SEGMENTS = {
    (24, ss.IFRAME): ([(0, 8), (8, 15), (15, 23)], [4, 12, 19]),
    (24, ss.MV): ([(1, 8), (8, 16), (16, 23)], [5, 12, 19]),
    (37, ss.RESIDUAL): ([(1, 13), (13, 24), (24, 36)], [7, 19, 30]),
    (5, ss.MV): ([(1, 2), (2, 3), (3, 4)], [1, 3, 3]),
    (2, ss.IFRAME): ([(0, 1), (0, 1), (1, 2)], [0, 0, 1]),   # empty spans get one frame
}


@pytest.mark.parametrize("num_frames,kind", sorted(SEGMENTS))
def test_segments_follow_coviar(num_frames, kind):
    ranges, centres = SEGMENTS[num_frames, kind]
    assert [ss.segment_range(num_frames, 3, s, kind) for s in range(3)] == ranges
    assert [ss.segment_centre(num_frames, 3, s, kind) for s in range(3)] == centres
    with pytest.raises(ValueError):
        ss.segment_range(num_frames, 3, 3, kind)


# --- what the trainer may import ----------------------------------------------------------

_BLOCK_HEAVY = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("cvpipe._native", "ray", "torch", "av")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_HEAVY + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_schema_imports_without_the_extension_ray_or_torch():
    """What the trainer does on a GPU node without FFmpeg: import the schema, and only it."""
    done = _run("""
        import numpy
        import cvpipe.shards.schema as ss
        from cvpipe.shards import codec
        assert codec.quantise_mv(numpy.array([-1], "int16")).tolist() == [122]
        print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch", "av", "cvpipe")))
    """)
    assert done.returncode == 0, done.stderr
    assert "loaded: ['cvpipe', 'cvpipe.datasets', 'cvpipe.datasets.manifest', 'cvpipe.shards', 'cvpipe.shards.codec', 'cvpipe.shards.schema']" in done.stdout


def test_a_member_that_does_not_decode_says_so_plainly():
    data = codec.encode_member(ss.MV, np.zeros((8, 8, 2), np.uint8), codec.Encoding("npy"))
    with pytest.raises(ValueError, match=r"256 bytes that do not decode as npy \(TokenError"):
        codec.decode_member(ss.MV, data[:20] + b"((" + data[22:], codec.Encoding("npy"))
    with pytest.raises(ValueError, match="do not decode as npy.zst"):
        codec.decode_member(ss.MV, b"not zstd", codec.Encoding("npy.zst", level=3))


@pytest.mark.parametrize("argv,expected", [
    ([], codec.DEFAULT_ENCODINGS),
    (["--zstd-level", "3"], {k: dataclasses.replace(e, level=3) for k, e in codec.DEFAULT_ENCODINGS.items()}),
    (["--iframe-format", "jpeg", "--jpeg-quality", "80", "--residual-format", "npy.zst"],
     {ss.IFRAME: codec.Encoding("jpeg", quality=80), ss.MV: codec.DEFAULT_ENCODINGS[ss.MV],
      ss.RESIDUAL: codec.Encoding("npy.zst", level=codec.DEFAULT_ENCODINGS[ss.RESIDUAL].level)}),
])
def test_cvpipe_shard_options_choose_each_kinds_encoding(argv: list[str], expected: dict) -> None:
    """--zstd-level overrides every zstd member's level and nothing else; without it each
    kind keeps its default level."""
    import argparse

    from cvpipe.cli import shard

    parser = argparse.ArgumentParser()
    shard.register(parser.add_subparsers())
    args = parser.parse_args(["shard", "--manifest", "m.jsonl", "--out", "out", *argv])
    assert shard.options_from_args(args).encodings == expected
