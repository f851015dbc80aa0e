"""No global state and the GIL released: threads extracting at once get exactly what one
thread gets, and pure-Python threads keep running while the extractor decodes."""

from __future__ import annotations

import contextlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import cvpipe

ALL = ("bgr", "mv", "mv_accumulated", "residual", "residual_accumulated", "blocks")
REPETITIONS = 12


def digest(out: dict) -> dict:
    """The arrays of an extraction, comparable with ==."""
    return {name: (b"".join(out[name][i][f].tobytes() for i in range(len(out[name]))
                            for f in out[name][i].dtype.names) if name == "blocks" else out[name].tobytes())
            for name in out}


def test_two_videos_in_two_threads_equal_one_thread(make_clip):
    clips = [make_clip("vtest_mv4"), make_clip("bikes")]
    videos = [cvpipe.open(clip) for clip in clips]
    serial = [digest(v.extract(range(v.num_frames), ALL)) for v in videos]

    def job(i: int) -> tuple[int, dict]:
        video = cvpipe.open(clips[i % 2])  # opening runs concurrently too
        return i % 2, digest(video.extract(range(video.num_frames), ALL))

    with ThreadPoolExecutor(max_workers=2) as pool:
        for which, result in pool.map(job, range(2 * REPETITIONS)):
            assert result == serial[which], f"{clips[which].name} differs when extracted beside another video"


def test_one_video_shared_by_threads_equals_one_thread(vtest_clip):
    video = cvpipe.open(vtest_clip)
    frame_sets = [range(video.num_frames), [39, 3, 3, 12], range(10, 30), [0, 24, 36]]
    serial = [digest(video.extract(frames, ALL)) for frames in frame_sets]
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [(i % len(frame_sets)) for i in range(3 * REPETITIONS)]
        results = pool.map(lambda i: digest(video.extract(frame_sets[i], ALL, threads=1 + i % 2)), jobs)
        for i, result in zip(jobs, results):
            assert result == serial[i], f"frame set {i} differs under concurrent use"


@contextlib.contextmanager
def python_thread_progress() -> Iterator[Callable[[], int]]:
    """Runs a pure-Python counter in a second thread and yields a function reading it.

    Forced GIL hand-overs are pushed out to 30 s, so while the main thread holds the GIL
    (pure Python, or native code that keeps it) the counter cannot advance; it advances
    only while the main thread waits with the GIL released.
    """
    count = 0
    go, stop = threading.Event(), threading.Event()

    def counter() -> None:
        nonlocal count
        go.wait()
        while not stop.is_set():
            count += 1
            if count % 10_000 == 0:
                stop.wait(0.0001)  # give the GIL back now and then so the main thread can return

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=counter)
    thread.start()
    try:
        sys.setswitchinterval(30.0)
        go.set()
        yield lambda: count
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()


def test_counter_cannot_run_while_the_gil_is_held():
    """The probe itself: a long builtin call that keeps the GIL leaves the counter still."""
    with python_thread_progress() as progress:
        before = progress()
        total = sum(range(3_000_000))
        during = progress() - before
    assert total > 0 and during == 0


def test_gil_is_released_while_decoding(make_clip):
    video = cvpipe.open(make_clip("vtest_qpel"))
    frames = list(range(video.num_frames)) * 3
    with python_thread_progress() as progress:
        before = progress()
        out = video.extract(frames, ALL)
        during = progress() - before
    assert out["bgr"].shape[0] == len(frames)
    assert during > 0, "the counter thread never ran during extraction: the GIL was held"


def test_gil_is_released_while_indexing(make_clip):
    """cvpipe.open scans the whole file; the GIL is free meanwhile too."""
    clip = make_clip("vtest_g16")
    with python_thread_progress() as progress:
        before = progress()
        videos = [cvpipe.open(clip) for _ in range(20)]
        during = progress() - before
    assert all(v.num_frames == videos[0].num_frames for v in videos)
    assert during > 0, "the counter thread never ran while indexing: the GIL was held"
