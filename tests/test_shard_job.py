"""The shard job on a real local Ray cluster (the session's `ray_cluster`) and real clips.

The dataset (`shard_dataset` in conftest.py) mixes eight good clips with a file of
random bytes, a missing file and a clip with B-frames. One clean run is the reference;
the fault-injected, resumed and re-optioned runs are compared with it byte for byte.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import cvpipe
from cvpipe import coviar
from cvpipe.cli import main as cli
from cvpipe.shards import codec
from cvpipe.shards import schema as ss
from cvpipe.shards.cluster import EnvironmentProblem
from cvpipe.shards.job import FAULT_KILL_ALWAYS_ENV, FAULT_KILL_ENV, FAULT_STALL_ENV, run_job
from cvpipe.shards.output import LOCK_NAME, RECORDS_DIR, OutputProblem
from cvpipe.shards.verify import verify
from cvpipe.shards.writer import ShardOptions, member_layout, tar_info

wds = pytest.importorskip("webdataset")

SHARD_SIZE = 2
# Ids in the planner's fixed shuffle (SHA-256 of the id) within each split, two per shard;
# test-000001 holds only the two bad test videos.
PLANNED = {"train-000000": ["bframes", "gop10"], "train-000001": ["pan_a", "pan_c"], "train-000002": ["pan_b"],
           "val-000000": ["lone_i", "pan_d"], "test-000000": ["pan_f", "pan_e"],
           "test-000001": ["x_garbage", "missing"]}


@pytest.fixture(scope="module")
def clean_run(ray_cluster, shard_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "shards"
    result = run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    return out, result


def _snapshot(out: Path) -> dict[str, bytes]:
    """What a reader sees: manifest.json and every tar, by name."""
    return {p.name: p.read_bytes() for p in sorted([*out.glob("*.tar"), out / "manifest.json"])}


def _samples(out: Path) -> dict[str, dict]:
    """Every sample of every shard, read by WebDataset itself, by key (each must be unique)."""
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    keys = Counter(s["__key__"] for s in samples)
    assert max(keys.values()) == 1, keys
    return {s["__key__"]: s for s in samples}


def test_every_video_is_in_one_shard_or_in_the_errors(clean_run, shard_dataset):
    out, result = clean_run
    assert result.ok, result.report.problems
    manifest = result.manifest
    assert [s["name"] for s in manifest["shards"]] == [f"{n}.tar" for n in PLANNED if n != "test-000001"]
    assert not (out / "test-000001.tar").exists()   # all its videos failed: no empty shard
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        assert shard["ids"] == [v for v in PLANNED[shard["name"][:-4]] if v in shard_dataset.good]

    errors = {e["id"]: e for e in manifest["errors"]}
    assert sorted(errors) == sorted(shard_dataset.bad)
    paths = {e.id: e.path for e in shard_dataset.entries}
    for vid, error in errors.items():
        assert error["path"] == paths[vid]
    assert errors["x_garbage"]["reason"].startswith("InvalidVideoError") and "garbage.m4v" in errors["x_garbage"]["reason"]
    assert errors["missing"]["reason"].startswith("FileNotFoundError")
    assert errors["bframes"]["reason"].startswith("UnsupportedVideoError")

    samples = _samples(out)
    assert sorted(samples) == sorted(shard_dataset.good)
    by_id = {e.id: e for e in shard_dataset.entries}
    for key, sample in samples.items():
        header = ss.Header.from_json(sample["json"])
        entry = by_id[key]
        assert (header.id, header.label, header.label_name, header.split, header.source) == \
               (entry.id, entry.label, entry.label_name, entry.split, entry.path)
        assert sorted(k for k in sample if not k.startswith("__")) == sorted(["json", *header.fields()])

    good = [by_id[v] for v in shard_dataset.good]
    totals = manifest["totals"]
    assert (totals["videos"], totals["samples"], totals["failed"]) == (len(shard_dataset.entries), 8, 3)
    assert totals["frames"] == sum(cvpipe.open(e.path).num_frames for e in good)
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == dict(Counter(e.split for e in good))
    assert {s: v["failed"] for s, v in manifest["splits"].items()} == {"train": 1, "val": 0, "test": 2}
    for row in manifest["classes"]:
        assert sum(row[s] for s in ("train", "val", "test")) == sum(e.label == row["label"] for e in good)


@pytest.mark.parametrize("vid", ["gop10", "pan_b", "lone_i"])
def test_every_member_round_trips_to_coviar_load(clean_run, shard_dataset, vid):
    """Decoded members equal cvpipe.coviar.load's arrays after CoViAR's quantisation."""
    out, _ = clean_run
    sample = _samples(out)[vid]
    header = ss.Header.from_json(sample["json"])
    path = header.source
    video = cvpipe.open(path)
    assert header.gop_starts == video.gop_starts and header.num_frames == video.num_frames
    sizes = [video.gop_size(g) for g in range(video.num_gops)]
    assert header.positions == tuple(tuple(range(1, n)) for n in sizes)   # default: every P position
    checked = Counter()
    for field in header.fields():
        kind, gop, pos, _ = ss.parse_field(field)
        stored = header.decode(field, sample[field])
        if kind == ss.IFRAME:
            expected = coviar.load(path, gop, pos, coviar.IFRAME, False)
        elif kind == ss.MV:
            expected = codec.quantise_mv(coviar.load(path, gop, pos, coviar.MV, True))
        else:
            expected = codec.quantise_residual(coviar.load(path, gop, pos, coviar.RESIDUAL, True))
        assert np.array_equal(stored, expected), field
        checked[kind] += 1
    assert checked[ss.IFRAME] == video.num_gops
    assert checked[ss.MV] == checked[ss.RESIDUAL] == sum(n - 1 for n in sizes)
    # The clips move, so the stored motion is not all "no motion" (128).
    assert any((header.decode(f, sample[f]) != 128).any() for f in header.fields() if ".mv." in f)


def test_verify_passes_and_catches_tampering(clean_run, tmp_path):
    out, _ = clean_run
    assert cli(["verify", str(out), "--deep"]) == 0

    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    tampered = copy / "train-000001.tar"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    truncated = copy / "val-000000.tar"
    with tarfile.open(truncated) as tar:   # cut where the second sample's first member begins
        members = tar.getmembers()
        cut = next(m.offset for m in members if m.name.split(".")[0] != members[0].name.split(".")[0])
    truncated.write_bytes(truncated.read_bytes()[:cut])
    shutil.copy(copy / "train-000002.tar", copy / "train-000099.tar")
    manifest = json.loads((copy / "manifest.json").read_text())
    missing = manifest["errors"].pop()
    manifest["errors"].append({"id": "pan_a", "path": "x", "reason": "listed twice"})
    (copy / "manifest.json").write_text(json.dumps(manifest))

    problems = "\n".join(verify(copy).problems)
    assert "train-000001.tar: " in problems and "SHA-256" in problems
    assert "val-000000.tar: no end-of-archive marker after 1 samples" in problems
    assert "train-000099.tar: a tar that manifest.json does not list" in problems
    assert f"video {missing['id']!r} of the source manifest is in no shard" in problems
    assert "video 'pan_a' is listed 2 times" in problems
    assert "train-000000.tar" not in problems and "test-000000.tar" not in problems
    assert cli(["verify", str(copy)]) == 1


def test_a_killed_worker_is_retried_and_the_output_is_unchanged(clean_run, shard_dataset, tmp_path, monkeypatch,
                                                                capsys):
    """Fault injection: the task of train-000001 SIGKILLs its own worker after one sample,
    on the first attempt; Ray's retry must give byte-identical output. Runs through the CLI."""
    clean, _ = clean_run
    out = tmp_path / "faulty"
    monkeypatch.setenv(FAULT_KILL_ENV, "train-000001")
    status = cli(["shard", "--manifest", str(shard_dataset.manifest), "--out", str(out),
                  "--shard-size", str(SHARD_SIZE), "--no-progress"])
    captured = capsys.readouterr()
    printed = captured.out
    assert status == 1, printed   # the three bad videos: recorded, the job done, and the status says so
    for bad in shard_dataset.bad:
        assert f"failed: {bad} (" in captured.err
    assert (out / ".fault-killed-train-000001").exists()   # touched right before the SIGKILL
    assert _snapshot(out) == _snapshot(clean)
    assert not list(out.rglob("*.tmp-*"))
    assert "11 (8 stored, 3 failed)" in printed and "verified  OK" in printed


# Shards whose every video was stored: the ones a run again keeps.
COMPLETE = ["train-000001", "train-000002", "val-000000", "test-000000"]


def test_a_run_again_keeps_complete_shards_and_retries_every_failed_video(clean_run, shard_dataset, tmp_path,
                                                                          capsys):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "again"))
    mtimes = {name: (out / f"{name}.tar").stat().st_mtime_ns for name in COMPLETE}
    assert cli(["shard", "--manifest", str(shard_dataset.manifest), "--out", str(out),
                "--shard-size", str(SHARD_SIZE), "--no-progress"]) == 1
    printed = capsys.readouterr()
    # train-000000 (bframes failed, gop10 stored) is rebuilt; test-000001 (both failed) is
    # tried again and still not written; the summary's shard counts add up.
    assert "shards    5 (1 built, 4 kept from an earlier run); 1 planned not written" in printed.out, printed.out
    assert "videos    11 (8 stored, 3 failed)" in printed.out
    for bad in shard_dataset.bad:
        assert f"failed: {bad} (" in printed.err
    assert {name: (out / f"{name}.tar").stat().st_mtime_ns for name in COMPLETE} == mtimes
    assert (out / "train-000000.tar").stat().st_mtime_ns != (clean / "train-000000.tar").stat().st_mtime_ns
    assert _snapshot(out) == _snapshot(clean)


def test_a_worker_that_always_dies_is_the_environment_not_a_bad_video(clean_run, shard_dataset, tmp_path,
                                                                       monkeypatch, capsys):
    """The task of train-000001 kills its worker on every attempt: past Ray's retries the
    job names that task and exits 2, records none of its videos as failed and writes no
    manifest.json; the other shards land, and a run again builds only the missing one."""
    clean, _ = clean_run
    out = tmp_path / "dying"
    monkeypatch.setenv(FAULT_KILL_ALWAYS_ENV, "train-000001")
    args = ["shard", "--manifest", str(shard_dataset.manifest), "--out", str(out), "--shard-size", str(SHARD_SIZE),
            "--no-progress"]
    assert cli(args) == 2
    error = capsys.readouterr().err
    assert "1 of 6 shard tasks failed for reasons that are not a video's" in error, error
    assert "train-000001 (2 videos): " in error and "failed:" not in error
    assert not (out / "manifest.json").exists() and not (out / "train-000001.tar").exists()
    assert not (out / RECORDS_DIR / "train-000001.json").exists()
    monkeypatch.delenv(FAULT_KILL_ALWAYS_ENV)
    result = run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    assert (result.kept, result.built, result.unwritten) == (3, 2, 1)   # train-000001 and train-000000 with a failure
    assert _snapshot(out) == _snapshot(clean)


def test_resume_rebuilds_what_is_missing_changed_or_unfinished(clean_run, shard_dataset, tmp_path):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "resumed"))
    (out / "train-000001.tar").unlink()                   # a shard that never landed
    (out / RECORDS_DIR / "val-000000.json").unlink()      # landed, but its record did not
    damaged = out / "test-000000.tar"                     # changed on disk since
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")
    dead = f"train-000002.tar.tmp-{'0123abcd' * 4}"
    (out / dead).write_bytes(b"half a shard")                                # a dead attempt
    shutil.copy(out / "train-000000.tar", out / "train-000007.tar")          # another plan's shard
    record = json.loads((out / RECORDS_DIR / "train-000000.json").read_text()) | {"name": "train-000007"}
    (out / RECORDS_DIR / "train-000007.json").write_text(json.dumps(record))  # and its record
    source = Path(next(e.path for e in shard_dataset.entries if e.id == "pan_b"))   # train-000002's video
    source_times = source.stat()
    os.utime(source, ns=(source_times.st_atime_ns, source_times.st_mtime_ns + 10**9))   # "re-encoded"
    try:
        result = run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    finally:
        os.utime(source, ns=(source_times.st_atime_ns, source_times.st_mtime_ns))
    assert result.ok, result.report.problems
    # Each complete shard was damaged one way; the other two had failed videos.
    assert (result.kept, result.built, result.unwritten) == (0, 5, 1)
    assert sorted(result.removed) == ["records/train-000007.json", dead, "train-000007.tar"]
    assert _snapshot(out) == _snapshot(clean)
    assert not list(out.rglob("*.tmp-*"))


def test_other_options_rebuild_every_shard(clean_run, shard_dataset, tmp_path):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "every2"))
    options = ShardOptions(positions="every2", encodings=dict(codec.DEFAULT_ENCODINGS) | {
        ss.IFRAME: codec.Encoding("jpeg", quality=90)})
    result = run_job(shard_dataset.manifest, out, options, shard_size=SHARD_SIZE, progress=False)
    assert result.ok, result.report.problems
    assert (result.kept, result.built, result.unwritten) == (0, len(PLANNED) - 1, 1)
    assert result.manifest["options"]["positions"] == "every2"
    assert result.manifest["totals"]["bytes"] < json.loads((clean / "manifest.json").read_text())["totals"]["bytes"]
    sample = _samples(out)["gop10"]
    header = ss.Header.from_json(sample["json"])
    assert header.positions == ((1, 3, 5, 7, 9), (1, 3, 5, 7, 9), (1, 3))
    frame = header.decode(header.field(ss.IFRAME, 1), sample[header.field(ss.IFRAME, 1)])
    assert frame.shape == (64, 64, 3)
    assert np.abs(frame.astype(int) - coviar.load(header.source, 1, 0, coviar.IFRAME, False)).mean() < 8
    assert verify(out, deep=True).ok


def test_workers_with_another_cvpipe_stop_the_job_before_anything_is_written(ray_cluster, shard_dataset, tmp_path,
                                                                            monkeypatch):
    """The workers (this session's cluster) import this checkout; the driver claims another
    version, as a driver installed apart from its cluster's workers would."""
    installed = cvpipe.__version__
    monkeypatch.setattr(cvpipe, "__version__", "0.0.0+other")
    out = tmp_path / "shards"
    with pytest.raises(EnvironmentProblem) as raised:
        run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    message = str(raised.value)
    assert "the Ray workers cannot run this job" in message
    assert f"the workers import cvpipe {installed}" in message and "the driver cvpipe 0.0.0+other" in message
    assert os.listdir(out) == [LOCK_NAME]   # the lock, nothing else


def test_an_interrupted_driver_resumes_to_the_same_output(clean_run, shard_dataset, tmp_path):
    """`cvpipe shard` in its own process and its own local Ray; the task of val-000000
    stalls (fault injection), so once the other five shards have landed the driver is
    interrupted mid-job with Ctrl-C; running again builds only what is missing."""
    clean, _ = clean_run
    out = tmp_path / "interrupted"
    env = os.environ | {FAULT_STALL_ENV: "val-000000", "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen([sys.executable, "-m", "cvpipe.cli", "shard", "--manifest", str(shard_dataset.manifest),
                               "--out", str(out), "--shard-size", str(SHARD_SIZE), "--workers", "2", "--no-progress"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    others = {f"{name}.json" for name in PLANNED if name != "val-000000"}
    try:
        deadline = time.monotonic() + 120
        while not others <= {p.name for p in (out / RECORDS_DIR).glob("*.json")}:
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended or hung before the stall"
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        printed, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130, printed
    assert "interrupted" in printed
    assert not (out / "val-000000.tar").exists() and not (out / "manifest.json").exists()

    result = run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
    assert result.ok, result.report.problems
    # val-000000 (stalled) and the two shards with failed videos; the other three are kept.
    assert (result.kept, result.built, result.unwritten) == (3, 2, 1)
    assert _snapshot(out) == _snapshot(clean)
    assert not list(out.rglob("*.tmp-*"))


def test_a_fifo_in_the_manifest_fails_alone_without_blocking_the_job(shard_dataset, tmp_path):
    """In its own process with a deadline: a job that blocked on the FIFO fails the test."""
    from cvpipe.datasets.manifest import ManifestEntry, write_manifest

    fifo = tmp_path / "live.m4v"
    os.mkfifo(fifo)
    good = next(e for e in shard_dataset.entries if e.id == "pan_a")
    manifest = tmp_path / "manifest.jsonl"
    write_manifest([good, ManifestEntry("live", str(fifo), 1, "class1", "train")], manifest)
    out = tmp_path / "shards"
    try:
        done = subprocess.run([sys.executable, "-m", "cvpipe.cli", "shard", "--manifest", str(manifest), "--out",
                               str(out), "--workers", "1", "--no-progress"], capture_output=True, text=True,
                              timeout=180, env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    except subprocess.TimeoutExpired:
        pytest.fail("cvpipe shard blocked on a FIFO")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"failed: live ({fifo}): InvalidVideoError: '{fifo}' is a FIFO, not a regular file" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 1


def test_a_manifest_with_a_bad_label_is_refused_before_any_work(shard_dataset, tmp_path, capsys):
    lines = shard_dataset.manifest.read_text().splitlines()
    bad = json.loads(lines[0]) | {"label": "3"}
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n")
    out = tmp_path / "shards"
    assert cli(["shard", "--manifest", str(manifest), "--out", str(out), "--no-progress"]) == 2
    assert f"cvpipe shard: {manifest}:1: bad manifest line: manifest entry {bad['id']!r}: label '3' is not a class " \
           "index" in capsys.readouterr().err
    assert not out.exists()


# --- The output folder: nothing deleted that the job did not write; one run at a time ---

def test_files_the_job_did_not_write_stop_it_and_survive(clean_run, shard_dataset, tmp_path, capsys):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "kept"))
    mine = {"backup.tmp-2024": b"user's", "train-000099.tar": b"user's tar", "records/my_settings.json": b"{}",
            "notes/today.txt": b"user's notes"}
    for name, data in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(data)
    args = ["shard", "--manifest", str(shard_dataset.manifest), "--out", str(out), "--shard-size", str(SHARD_SIZE),
            "--no-progress"]
    assert cli(args) == 2
    error = capsys.readouterr().err
    assert f"{out} holds 4 file(s) cvpipe shard did not write" in error, error
    for name in ("backup.tmp-2024", "train-000099.tar", "records/my_settings.json", "notes"):
        assert f"\n  {name}\n" in error + "\n"
    # --force goes on and leaves them; the stray tar is then what verification reports.
    assert cli([*args, "--force"]) == 1
    assert "train-000099.tar: a tar that manifest.json does not list" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in mine} == mine


def test_a_linked_records_folder_is_never_followed(clean_run, shard_dataset, tmp_path, capsys):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "linked"))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / RECORDS_DIR, elsewhere)
    (elsewhere / "important.json").write_text('{"keep": true}')
    (out / RECORDS_DIR).symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    for force in ([], ["--force"]):
        assert cli(["shard", "--manifest", str(shard_dataset.manifest), "--out", str(out), "--shard-size",
                    str(SHARD_SIZE), "--no-progress", *force]) == 2
        assert f"{out / RECORDS_DIR} is a symbolic link" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before


def test_a_second_run_into_a_folder_in_use_refuses_naming_the_first(ray_cluster, shard_dataset, tmp_path):
    """The first run (its own process) stalls in val-000000's task; a second run into the
    same folder refuses at once, naming the first, and deletes nothing of it; the first,
    interrupted, resumes to the clean output."""
    out = tmp_path / "busy"
    env = os.environ | {FAULT_STALL_ENV: "val-000000", "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, "-m", "cvpipe.cli", "shard", "--manifest", str(shard_dataset.manifest),
                              "--out", str(out), "--shard-size", str(SHARD_SIZE), "--workers", "2", "--no-progress"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Every other shard landed: from here on the first run writes nothing until interrupted.
        others = {f"{name}.json" for name in PLANNED if name != "val-000000"}
        deadline = time.monotonic() + 120
        while not others <= {p.name for p in (out / RECORDS_DIR).glob("*.json")}:
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended or hung"
            time.sleep(0.05)
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(OutputProblem, match=rf"{out} is in use by another cvpipe shard \(pid {first.pid} on "):
            run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    result = run_job(shard_dataset.manifest, out, shard_size=SHARD_SIZE, progress=False)   # the lock is free again
    assert result.ok, result.report.problems


TAMPERED = {  # (what to change in manifest.json) -> what verify says
    "train samples": (lambda m: m["splits"]["train"].update(samples=10**7),
                      "manifest.json: splits.train.samples is 10000000, its shards add up to 4"),
    "total frames": (lambda m: m["totals"].update(frames=1),
                     "manifest.json: totals.frames is 1, its shards add up to"),
    "a class label": (lambda m: m["classes"][0].update(label=10**6),
                      "manifest.json lists 0 train videos of class 0, the shards hold"),
    "a shard's sha256": (lambda m: m["shards"][0].pop("sha256"),
                         "manifest.json: shard train-000000.tar: sha256 missing or of the wrong type"),
    "the shard list": (lambda m: m.pop("shards"), "manifest.json: 'shards' is missing or not a list"),
}


@pytest.mark.parametrize("change", list(TAMPERED))
def test_verify_cross_checks_every_count_against_the_shards(clean_run, tmp_path, change, capsys):
    clean, _ = clean_run
    out = Path(shutil.copytree(clean, tmp_path / "tampered"))
    manifest = json.loads((out / "manifest.json").read_text())
    tamper, says = TAMPERED[change]
    tamper(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert cli(["verify", str(out)]) == 1
    assert f"problem: {says}" in capsys.readouterr().out


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live descendant of `pid` (Linux /proc)."""
    rows = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        rows[int(name)] = (int(fields[1]), fields[19])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in rows.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in processes.items():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19] == start:
                alive.append(pid)
        except OSError:
            pass
    return alive


def test_the_embedded_cluster_ends_with_a_killed_driver(shard_dataset, tmp_path):
    """SIGKILL of a `cvpipe shard` driver mid-job: every process of its embedded Ray
    (raylet, GCS, the dashboard and runtime-env agents, workers) is gone soon after."""
    out = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "cvpipe.cli", "shard", "--manifest", str(shard_dataset.manifest),
                               "--out", str(out), "--shard-size", str(SHARD_SIZE), "--workers", "1", "--no-progress"],
                              env=os.environ | {FAULT_STALL_ENV: "train-000000", "RAY_AUTH_MODE": "disabled"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("train-000000.tar.tmp-*")):   # the stalled task is running
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended or hung"
            time.sleep(0.1)
        time.sleep(2)   # the agents are up by now
        cluster = _descendants(driver.pid)
        assert len(cluster) >= 4, cluster   # GCS, raylet, agents, a worker
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30
    while _alive(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(cluster), [Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in _alive(cluster)]


@pytest.mark.parametrize("key", ["v_short", "v_" + "x" * 120])  # a name past 100 bytes takes a pax header
def test_the_header_layout_is_where_tarfile_finds_each_member(tmp_path: Path, key: str) -> None:
    members = [("json", b"{}" * 300), ("g0000.iframe.delta.npy.zst", bytes(range(256)) * 7),
               ("g0000.p01.mv.npy.zst", b""), ("g0000.p01.res.delta.npy.zst", b"\x01" * 513)]
    path = tmp_path / "one.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(tar_info(f"{key}.{name}", len(data)), io.BytesIO(data))
    layout, span = member_layout(key, members[1:])
    with tarfile.open(path) as tar:
        infos = {i.name.split(".", 1)[1]: i for i in tar.getmembers()}
    base = infos["json"].offset_data + -(-infos["json"].size // 512) * 512
    assert layout == {name: (infos[name].offset_data - base, infos[name].size) for name, _ in members[1:]}
    last = infos[members[-1][0]]
    assert base + span == last.offset_data + -(-last.size // 512) * 512
