"""Bad input gets a clear Python exception naming the file and the problem: missing
files, things that are not videos, other codecs, B-frames, truncated and corrupted
bitstreams, out-of-range indices. Damage never costs the intact GOPs before it."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import cvpipe
from cvpipe import coviar

ALL = ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated", "blocks", "intra_mask")
DENSE = ALL[:5]


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no" / "such.m4v"
    for call in (cvpipe.open, coviar.get_num_frames, coviar.get_num_gops, lambda p: coviar.load(p, 0, 0, 0, False)):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            call(missing)


NOT_VIDEOS = {
    "notes.txt": b"this is not a video\n" * 200,
    "notes.m4v": b"this is not a video\n" * 200,
    "random.avi": np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
    "random.m4v": np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
    "empty.mp4": b"",
    "empty.m4v": b"",
}


@pytest.mark.parametrize("name", list(NOT_VIDEOS))
def test_not_a_video_raises_invalid_video(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_VIDEOS[name])
    with pytest.raises(cvpipe.InvalidVideoError, match=str(path)):
        cvpipe.open(path)


def test_directory_raises_invalid_video(tmp_path):
    with pytest.raises(cvpipe.InvalidVideoError, match=str(tmp_path)):
        cvpipe.open(tmp_path)


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_other_codecs_raise_unsupported_naming_the_codec(foreign_clips, codec):
    path = foreign_clips[codec]
    with pytest.raises(cvpipe.UnsupportedVideoError) as raised:
        cvpipe.open(path)
    message = str(raised.value)
    assert str(path) in message and codec in message.lower() and "MPEG-4 Part 2" in message, message
    assert isinstance(raised.value, ValueError)


def test_b_frames_are_refused_on_extract_with_the_fix(bframe_clip):
    video = cvpipe.open(bframe_clip)
    assert video.has_b_frames and "B" in video.frame_types
    for representations in (("bgr",), ("mv",), ("blocks",)):
        with pytest.raises(cvpipe.UnsupportedVideoError) as raised:
            video.extract([1], representations)
        message = str(raised.value)
        assert str(bframe_clip) in message and "B-" in message and "-bf 0" in message, message
    with pytest.raises(cvpipe.UnsupportedVideoError, match="B-"):
        coviar.load(bframe_clip, 0, 1, coviar.MV, False)


def test_out_of_range_indices_raise_index_error(vtest_clip):
    video = cvpipe.open(vtest_clip)
    n = video.num_frames
    for frames in ([n], [-1], [0, n + 100]):
        with pytest.raises(IndexError, match=str(vtest_clip)):
            video.extract(frames, ("bgr",))
    with pytest.raises(IndexError):
        video.extract_each({"bgr": [0], "mv": [n]})
    for call in (lambda: video.frame_index(video.num_gops, 0), lambda: video.frame_index(0, video.gop_size(0)),
                 lambda: video.gop_size(-1), lambda: video.locate(n), lambda: video.locate(-1)):
        with pytest.raises(IndexError):
            call()


def extract_per_gop(path: Path) -> list[dict | None]:
    """Every GOP's frames with every representation; None for a GOP refused as corrupt.
    Raises whatever opening the file raises."""
    video = cvpipe.open(path)
    results = []
    for gop in range(video.num_gops):
        frames = range(video.gop_starts[gop], video.gop_starts[gop] + video.gop_size(gop))
        try:
            out = video.extract(frames, ALL)
        except cvpipe.InvalidVideoError as error:
            assert str(path) in str(error) and f"GOP {gop}" in str(error), str(error)
            results.append(None)
            continue
        for name in DENSE:
            assert out[name].shape[:3] == (len(frames), video.height, video.width), name
        results.append(out)
    return results


@pytest.fixture(scope="module")
def damageable(make_clip, container_clips) -> dict[str, Path]:
    """A raw m4v, an AVI (GOP 16), and an MP4 with its index up front, so that a cut
    leaves an index pointing past the end of the file."""
    return {"m4v": container_clips["m4v"], "avi": make_clip("vtest_g16"), "mp4": container_clips["faststart.mp4"]}


@pytest.mark.parametrize("container", ["m4v", "avi", "mp4"])
@pytest.mark.parametrize("fraction", [0.0005, 0.02, 0.3, 0.61, 0.999])
def test_truncated_clip_keeps_the_gops_before_the_cut(damageable, container, fraction, tmp_path):
    source = damageable[container]
    data = source.read_bytes()
    cut = tmp_path / f"cut{source.suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    try:
        damaged = extract_per_gop(cut)
    except cvpipe.InvalidVideoError as error:
        assert str(cut) in str(error)
        return
    intact = cvpipe.open(source)
    assert cvpipe.open(cut).num_frames <= intact.num_frames
    expected = intact.extract(range(intact.num_frames), ALL)
    start = 0
    # Every GOP but the last lies wholly before the cut: it must come back, unchanged.
    for gop, out in enumerate(damaged[:-1]):
        assert out is not None, f"GOP {gop} lies before the cut yet was refused"
        frames = range(start, start + len(out["bgr"]))
        for name in DENSE:
            np.testing.assert_array_equal(out[name], expected[name][frames], err_msg=f"GOP {gop}: {name}")
        start = frames.stop


@pytest.mark.parametrize("container", ["m4v", "avi", "mp4"])
@pytest.mark.parametrize("where, length", [(0.0, 8), (0.001, 4), (0.3, 64), (0.55, 1), (0.8, 2000)])
def test_corrupted_clip_gives_valid_output_or_a_clean_error(damageable, container, where, length, tmp_path):
    source = damageable[container]
    data = bytearray(source.read_bytes())
    start = int(len(data) * where)
    data[start:start + length] = bytes(b ^ 0x5A for b in data[start:start + length])
    bad = tmp_path / f"bad{source.suffix}"
    bad.write_bytes(bytes(data))
    try:
        extract_per_gop(bad)
    except (cvpipe.InvalidVideoError, cvpipe.UnsupportedVideoError) as error:
        assert str(bad) in str(error)


# --- Only regular local files reach FFmpeg (issue 10: security, hangs, clear errors) ----

def _in_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`code` in a child Python with a deadline: a regression that blocks fails, not hangs."""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still blocked after {timeout} s: {code}")


def test_a_fifo_is_refused_at_once_naming_it(tmp_path):
    fifo = tmp_path / "stream.m4v"
    os.mkfifo(fifo)
    done = _in_child(f"import cvpipe; cvpipe.open({str(fifo)!r})")
    assert f"InvalidVideoError: '{fifo}' is a FIFO, not a regular file" in done.stderr, done.stderr


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Recorder.requests.append(self.path)
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_local_path_that_reads_as_a_url_is_opened_as_that_file(tmp_path, pan_clip, monkeypatch):
    """A file named http:/127.0.0.1:PORT/x.m4v: FFmpeg would take the name for a URL and
    ask the server; cvpipe opens the file, and the server hears nothing."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"http:/127.0.0.1:{server.server_address[1]}/x.m4v"
        (tmp_path / name).parent.mkdir(parents=True)
        shutil.copy(pan_clip, tmp_path / name)
        monkeypatch.chdir(tmp_path)
        video = cvpipe.open(name)
        assert video.num_frames == cvpipe.open(pan_clip).num_frames
        with pytest.raises(FileNotFoundError):
            cvpipe.open(name.replace("x.m4v", "y.m4v"))   # no such file: not a download either
    finally:
        server.shutdown()
    assert _Recorder.requests == []


def test_a_path_with_a_nul_byte_is_refused(pan_clip):
    with pytest.raises(ValueError, match="NUL byte"):
        cvpipe.open(str(pan_clip) + "\0.extra")


def test_an_unreadable_file_raises_permission_error(tmp_path, pan_clip):
    locked = tmp_path / "locked.m4v"
    shutil.copy(pan_clip, locked)
    locked.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(PermissionError, match=str(locked)):
            cvpipe.open(locked)
        return
    # Root reads everything: a forked child (the extension already loaded) drops to nobody.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                cvpipe.open(locked)
                outcome = "opened"
            except Exception as e:  # noqa: BLE001 - reported to the parent
                outcome = f"{type(e).__name__}: {e}"
            os.write(write, outcome.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        outcome = f.read()
    assert outcome == f"PermissionError: Permission denied: '{locked}'", outcome


@pytest.mark.parametrize("index", [1.7, np.float32(2.9), "3", True, None])
def test_non_integer_indices_are_refused_not_truncated(vtest_clip, index):
    video = cvpipe.open(vtest_clip)
    calls = {"frame": lambda: video.extract([index], ("mv",)), "locate": lambda: video.locate(index),
             "position": lambda: coviar.load(vtest_clip, 0, index, coviar.MV, True),
             "gop": lambda: coviar.load(vtest_clip, index, 1, coviar.MV, True), "gop size": lambda: video.gop_size(index)}
    for what, call in calls.items():
        with pytest.raises(TypeError, match="must be an integer"):
            call()
    # numpy's integers are integers
    assert video.extract([np.int64(3)], ("mv",))["mv"].shape[0] == 1
    assert coviar.load(vtest_clip, np.int32(1), np.uint8(2), coviar.MV, True).shape[-1] == 2


def test_threads_must_be_a_positive_integer(vtest_clip):
    video = cvpipe.open(vtest_clip)
    for threads, error in (("2", TypeError), (2.0, TypeError), (0, ValueError)):
        with pytest.raises(error, match="threads"):
            video.extract([1], ("mv",), threads=threads)


def _declare_size(data: bytes, width: int, height: int) -> bytes:
    """A raw m4v whose VOL headers (00 00 01 2x) declare width x height, nothing else changed:
    the fields before them are walked as ISO 14496-2 6.2.3 lays them out."""
    out = bytearray(data)
    at = 0
    while (at := out.find(b"\x00\x00\x01", at)) >= 0:
        if 0x20 <= out[at + 3] <= 0x2F:
            bits = "".join(f"{b:08b}" for b in out[at + 4:at + 40])
            pos = 0

            def read(n: int) -> int:
                nonlocal pos
                pos += n
                return int(bits[pos - n:pos], 2)

            read(9)                                   # random_accessible_vol, video_object_type_indication
            if read(1):                               # is_object_layer_identifier: verid, priority
                read(7)
            if read(4) == 15:                         # aspect_ratio_info: an extended PAR follows
                read(16)
            if read(1):                               # vol_control_parameters
                read(3)                               # chroma_format, low_delay
                if read(1):                           # vbv_parameters
                    read(79)
            assert read(2) == 0, "a rectangular VOL"  # video_object_layer_shape
            read(1)
            resolution = read(16)                     # vop_time_increment_resolution
            read(1)
            if read(1):                               # fixed_vop_rate
                read(max((resolution - 1).bit_length(), 1))
            read(1)                                   # marker; then width, marker, height
            bits = bits[:pos] + f"{width:013b}" + bits[pos + 13] + f"{height:013b}" + bits[pos + 27:]
            out[at + 4:at + 40] = int(bits, 2).to_bytes(36, "big")
        at += 4
    return bytes(out)


def test_a_forged_frame_size_is_refused_before_it_costs_memory(tmp_path):
    """300 bytes whose VOL declares 8191x8191: refused at open, in a few tens of MiB
    (before the check, opening and extracting it took 1.4 GiB)."""
    small = tmp_path / "small.m4v"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", "color=gray:s=64x64:d=0.48:r=25",
                    "-c:v", "mpeg4", "-g", "12", "-bf", "0", "-f", "m4v", str(small)], check=True)
    forged = tmp_path / "forged.m4v"
    forged.write_bytes(_declare_size(small.read_bytes(), 8191, 8191))
    assert cvpipe.open(small).width == 64
    # VmHWM is this process image's peak (ru_maxrss would carry the forking parent's over exec).
    done = _in_child(f"""
import cvpipe
try:
    cvpipe.open({str(forged)!r}).extract([0], ("bgr",))
except cvpipe.InvalidVideoError as e:
    print("refused:", e)
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("peak MiB", int(peak.split()[1]) // 1024)""")
    assert "refused: " in done.stdout and "declares 8191x8191 (262144 macroblocks)" in done.stdout, done.stdout
    assert int(done.stdout.split("peak MiB")[1]) < 300, done.stdout


def test_show_names_what_is_wrong_without_a_traceback(tmp_path, pan_clip, capsys):
    from cvpipe.cli import main

    empty = tmp_path / "empty.m4v"
    empty.write_bytes(b"")
    cases = [([str(pan_clip), "--frame", "999", "--out", str(tmp_path / "a.png")], 1,
              f"frame 999 is out of range: '{pan_clip}'"),
             ([str(empty), "--out", str(tmp_path / "a.png")], 1, f"'{empty}'"),
             ([str(pan_clip), "--out", str(tmp_path / "no" / "a.png")], 2, f"'{tmp_path / 'no'}', does not exist")]
    for args, status, says in cases:
        assert main(["show", *args]) == status
        err = capsys.readouterr().err
        assert err.startswith("cvpipe show: ") and says in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("*.png"))
