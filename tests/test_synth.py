"""`cvpipe synth`: the synthetic action dataset is reproducible, balanced, CoViAR-format,
and its classes differ the way the class table says (motion or appearance).

Motion and appearance are measured on the encoded videos with the extractor, inside the
actor's disc as the scene description places it (ground truth from the renderer).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import cvpipe
from cvpipe.cli import main
from cvpipe.datasets.manifest import read_manifest
from cvpipe.datasets.synth import MAX_CLASSES, SynthConfig, generate, scene, split_counts, synth_class, video_id

CONFIG = SynthConfig(classes=4, videos_per_class=3, frames=24, width=64, height=64, seed=7)
CLI_ARGS = ["--classes", "4", "--videos-per-class", "3", "--frames", "24", "--size", "64x64", "--seed", "7"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    report = generate(CONFIG, out, jobs=2, progress=False)
    assert report.videos == 12 and not report.failed
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run = subprocess.run([sys.executable, "-m", "cvpipe.cli", "synth", "--out", str(again), "--jobs", "1", *CLI_ARGS],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "generated 12 videos" in run.stdout
    first, second = _files(dataset), _files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".m4v")]) == 12
    for name in first:
        if name.endswith(".jsonl"):  # paths are absolute: equal once the folder is factored out
            assert first[name].replace(str(dataset).encode(), b"ROOT") == second[name].replace(str(again).encode(), b"ROOT")
        else:
            assert first[name] == second[name], name


def test_a_video_depends_on_its_seed_not_on_the_dataset_size(dataset: Path, tmp_path: Path) -> None:
    small = SynthConfig(**{**CONFIG.__dict__, "classes": 2, "videos_per_class": 1})
    generate(small, tmp_path / "small", jobs=1, progress=False)
    generate(SynthConfig(**{**small.__dict__, "seed": 8}), tmp_path / "other", jobs=1, progress=False)
    name = f"videos/{video_id(1, 0)}.m4v"
    assert (tmp_path / "small" / name).read_bytes() == (dataset / name).read_bytes()
    assert (tmp_path / "other" / name).read_bytes() != (dataset / name).read_bytes()


def test_labels_balanced_splits_stratified_ids_clean(dataset: Path) -> None:
    everything = read_manifest(dataset / "all.jsonl")
    assert Counter(e.label for e in everything) == {label: 3 for label in range(4)}
    assert all(e.label_name == synth_class(e.label).name for e in everything)
    ids = [e.id for e in everything]
    assert len(set(ids)) == len(ids) and not any("." in i for i in ids)
    assert set(ids) == {video_id(label, n) for label in range(4) for n in range(3)}
    assert all(Path(e.path).is_absolute() and Path(e.path).is_file() for e in everything)
    splits = {split: read_manifest(dataset / f"{split}.jsonl") for split in ("train", "val", "test")}
    assert sorted(e.id for entries in splits.values() for e in entries) == sorted(ids)
    for split, entries in splits.items():
        assert all(e.split == split for e in entries)
        # 3 videos a class: one each (a non-zero fraction keeps at least one video).
        assert Counter(e.label for e in entries) == {label: 1 for label in range(4)}


def test_split_counts() -> None:
    assert split_counts(40, 0.15, 0.15) == (28, 6, 6)
    assert split_counts(3, 0.15, 0.15) == (1, 1, 1)
    assert split_counts(2, 0.15, 0.15) == (2, 0, 0)
    assert split_counts(10, 0.0, 0.2) == (8, 0, 2)


def test_every_video_has_the_gop_table_asked(dataset: Path) -> None:
    for entry in read_manifest(dataset / "all.jsonl"):
        video = cvpipe.open(entry.path)
        assert (video.width, video.height, video.num_frames) == (64, 64, 24)
        assert video.gop_starts == (0, 12) and video.frame_types == ("I" + "P" * 11) * 2


def _inside_actor(label: int, index: int, frame: int, shrink: float = 0.7) -> np.ndarray:
    cx, cy, radius = scene(CONFIG, label, index).actor_on_screen(frame)
    ys, xs = np.mgrid[0:CONFIG.height, 0:CONFIG.width] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 < (shrink * radius) ** 2


def _labels_with(**fields: str) -> list[int]:
    return [k for k in range(CONFIG.classes)
            if all(getattr(synth_class(k), key) == value for key, value in fields.items())]


def test_motion_classes_differ_in_motion(dataset: Path) -> None:
    # Same object, opposite directions: the actor's accumulated MV at the last frame of
    # each GOP points the class's way (CoViAR sign: where a pixel went since the I-frame).
    (right,), (left,) = _labels_with(object="stripes", motion="right"), _labels_with(object="stripes", motion="left")
    mean_x = {}
    for label in (right, left):
        values = []
        for index in range(CONFIG.videos_per_class):
            video = cvpipe.open(dataset / "videos" / f"{video_id(label, index)}.m4v")
            mv = video.extract([11, 23], ["mv_accumulated"])["mv_accumulated"]
            values += [mv[i, ..., 0][_inside_actor(label, index, frame)].mean() for i, frame in enumerate((11, 23))]
        mean_x[label] = np.mean(values)
    assert mean_x[right] > 1.0 and mean_x[left] < -1.0


def test_appearance_classes_differ_in_appearance(dataset: Path) -> None:
    # The actor's mean colour in the I-frame: closer between the two classes of one object
    # (stripes_right/stripes_left, dots_left/dots_crawl) than between any two of different objects.
    colour = {}
    for label in range(CONFIG.classes):
        samples = []
        for index in range(CONFIG.videos_per_class):
            bgr = cvpipe.open(dataset / "videos" / f"{video_id(label, index)}.m4v").extract([0], ["bgr"])["bgr"][0]
            samples.append(bgr[_inside_actor(label, index, 0)].mean(axis=0))
        colour[label] = np.mean(samples, axis=0)
    same = [np.linalg.norm(colour[a] - colour[b]) for a in range(4) for b in range(a + 1, 4)
            if synth_class(a).object == synth_class(b).object]
    different = [np.linalg.norm(colour[a] - colour[b]) for a in range(4) for b in range(a + 1, 4)
                 if synth_class(a).object != synth_class(b).object]
    assert len(same) == 2 and max(same) < min(different)


def test_class_chain_pairs_every_class_with_a_motion_twin_and_an_appearance_twin() -> None:
    classes = [synth_class(k) for k in range(10)]
    assert len({c.name for c in classes}) == 10
    assert Counter(c.object for c in classes) == Counter({c.object: 2 for c in classes})
    motions = Counter(c.motion for c in classes)
    assert set(motions.values()) == {1, 2} and {m for m, n in motions.items() if n == 1} == {"right", "zoom_in"}
    assert {"right", "left", "crawl", "swing", "spin", "zoom_in"} == set(motions)


def test_list_classes_and_bad_arguments(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["synth", "--list-classes", "--classes", str(MAX_CLASSES)]) == 0
    table = capsys.readouterr().out
    assert all(synth_class(k).name in table for k in range(MAX_CLASSES))
    assert main(["synth", "--out", str(tmp_path), "--classes", str(MAX_CLASSES + 1)]) == 2
    assert main(["synth", "--out", str(tmp_path), "--size", "99x64"]) == 2
    assert "must be even" in capsys.readouterr().err
    assert main(["synth"]) == 2
    assert list(tmp_path.iterdir()) == []
