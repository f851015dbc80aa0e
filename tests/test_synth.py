"""`cvpipe synth`: the synthetic action dataset is reproducible, balanced, CoViAR-format,
and each class's cue shows in the modality it is meant for (appearance in the I-frame,
motion in the motion vectors, spots in the residuals), present with its probability.

Cues are measured on the encoded videos with the extractor, inside the actor's discs and
spots as the scene description places them (ground truth from the renderer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import cvpipe
from cvpipe.cli import main
from cvpipe.datasets.encode import encode_frames
from cvpipe.datasets.manifest import read_manifest
from cvpipe.datasets.synth import (
    APPEARANCES,
    FPS,
    MAX_CLASSES,
    SynthConfig,
    cues,
    cues_shown,
    generate,
    scene,
    split_counts,
    synth_class,
    video_id,
)
from cvpipe.datasets.synth_render import MOTIONS, SPOT_PATTERNS, STILL

# Every cue shown, so each class test sees its cue; the probabilities have their own test.
CONFIG = SynthConfig(classes=4, videos_per_class=3, frames=24, width=96, height=96, seed=7,
                     iframe_cue=1.0, residual_cue=1.0, mv_cue=1.0)
CLI_ARGS = ["--classes", "4", "--videos-per-class", "3", "--frames", "24", "--size", "96x96", "--seed", "7",
            "--iframe-cue", "1", "--residual-cue", "1", "--mv-cue", "1"]


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
        assert (video.width, video.height, video.num_frames) == (96, 96, 24)
        assert video.gop_starts == (0, 12) and video.frame_types == ("I" + "P" * 11) * 2


def _inside(label: int, index: int, part: int, frame: int, shrink: float = 0.7) -> np.ndarray:
    """Pixels well inside one of the actor's sprites (0: upper disc, 1: lower disc, 2..: spots)."""
    sc = scene(CONFIG, label, index)
    cx, cy, radius = sc.on_screen(sc.parts[part].track, frame)
    ys, xs = np.mgrid[0:CONFIG.height, 0:CONFIG.width] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 < (shrink * radius) ** 2


def _x_motion(videos: Path, label: int, parts: tuple[int, ...] = (0, 1)) -> float:
    """How far `parts` of the actor (0: upper disc, 1: lower) went right since the I-frame,
    by their accumulated MV at the last frame of each GOP (CoViAR sign: where a pixel went),
    against the background's, so the camera's pan cancels; mean over the class's videos."""
    values = []
    for index in range(CONFIG.videos_per_class):
        mv = cvpipe.open(videos / f"{video_id(label, index)}.m4v").extract([11, 23], ["mv_accumulated"])
        for i, frame in enumerate((11, 23)):
            x = mv["mv_accumulated"][i, ..., 0]
            region = np.logical_or.reduce([_inside(label, index, part, frame) for part in parts])
            actor = _inside(label, index, 0, frame) | _inside(label, index, 1, frame)
            values.append(x[region].mean() - np.median(x[~actor]))
    return float(np.mean(values))


def test_motion_cues_show_in_the_motion_vectors(dataset: Path) -> None:
    assert MOTIONS[0].name == "right" and MOTIONS[1].name == "left"
    assert _x_motion(dataset / "videos", 0) > 2.0 and _x_motion(dataset / "videos", 1) < -2.0


def test_a_turn_moves_the_discs_apart_in_the_motion_vectors(tmp_path: Path) -> None:
    # One segment shows a turn as the two discs going opposite ways: clockwise on screen
    # carries the upper disc right and the lower one left.
    for name, sign in (("turn", 1), ("turn_back", -1)):
        label = next(k for k, m in enumerate(MOTIONS) if m.name == name)
        for index in range(CONFIG.videos_per_class):
            encode_frames(scene(CONFIG, label, index).frames(), tmp_path / f"{video_id(label, index)}.m4v",
                          CONFIG.encode_options(), fps=FPS)
        upper, lower = _x_motion(tmp_path, label, (0,)), _x_motion(tmp_path, label, (1,))
        assert sign * upper > 1.0 and sign * lower < -1.0, (name, upper, lower)


def test_appearance_cues_show_in_the_i_frame(dataset: Path) -> None:
    # Classes 0 and 1 carry the same two surfaces in the other order: the upper disc of one
    # looks like the lower disc of the other, and unlike its own lower disc.
    assert APPEARANCES[0] == APPEARANCES[1][::-1]
    colour = {}
    for label in (0, 1):
        for part in (0, 1):
            samples = []
            for index in range(CONFIG.videos_per_class):
                bgr = cvpipe.open(dataset / "videos" / f"{video_id(label, index)}.m4v").extract([0], ["bgr"])["bgr"][0]
                samples.append(bgr[_inside(label, index, part, 0)].mean(axis=0))
            colour[label, part] = np.mean(samples, axis=0)
    same = [np.linalg.norm(colour[0, 0] - colour[1, 1]), np.linalg.norm(colour[0, 1] - colour[1, 0])]
    different = [np.linalg.norm(colour[0, 0] - colour[0, 1]), np.linalg.norm(colour[1, 0] - colour[1, 1])]
    assert max(same) < 0.5 * min(different)


def test_spot_cues_show_in_the_residual_not_in_the_i_frame(dataset: Path, tmp_path: Path) -> None:
    # The same videos drawn without their spots (the cue has its own random stream, so
    # nothing else changes): the I-frame, the GOP's first frame, is bit-identical; mid-GOP the
    # residual differs on the spots, by far more than on the rest of the frame.
    unlit = tmp_path / "unlit"
    generate(SynthConfig(**{**CONFIG.__dict__, "residual_cue": 0.0}), unlit, jobs=2, progress=False)
    on_spots, elsewhere = [], []
    for label in range(CONFIG.classes):
        for index in range(CONFIG.videos_per_class):
            name = f"videos/{video_id(label, index)}.m4v"
            lit, dark = (cvpipe.open(root / name).extract([0, 6], ["bgr", "residual"]) for root in (dataset, unlit))
            assert np.array_equal(lit["bgr"][0], dark["bgr"][0])
            change = np.abs(lit["residual"][1].astype(np.float64) - dark["residual"][1]).mean(-1)
            spots = np.any([_inside(label, index, p, 6) for p in range(2, 5)], axis=0)
            near = np.any([_inside(label, index, p, 6, shrink=3.0) for p in range(2, 5)], axis=0)
            on_spots.append(change[spots].mean())
            elsewhere.append(change[~near].mean())
    assert np.median(on_spots) > 20 and np.median(on_spots) > 10 * np.median(elsewhere)


def test_each_modality_names_every_class() -> None:
    classes = [synth_class(k) for k in range(MAX_CLASSES)]
    assert len({c.name for c in classes}) == MAX_CLASSES
    for cue in ("motion", "spots"):
        assert len({getattr(c, cue) for c in classes}) == MAX_CLASSES, cue
    assert len({(c.top, c.bottom) for c in classes}) == MAX_CLASSES and all(c.top != c.bottom for c in classes)
    assert len({frozenset(cells) for _, cells in SPOT_PATTERNS}) == len(SPOT_PATTERNS)
    assert all(len(cells) == 3 for _, cells in SPOT_PATTERNS)


def test_cues_are_shown_with_their_probabilities_independently() -> None:
    config = SynthConfig(iframe_cue=0.9, residual_cue=0.8, mv_cue=0.6)
    shown = [cues_shown(cues(config, k % 10, n)) for k in range(10) for n in range(300)]
    for modality, p in (("iframe", 0.9), ("residual", 0.8), ("mv", 0.6)):
        assert abs(np.mean([s[modality] for s in shown]) - p) < 0.03, modality
    both = np.mean([s["iframe"] and s["mv"] for s in shown])
    assert abs(both - 0.9 * 0.6) < 0.03  # independent
    # An absent cue is the neutral one, and raising a probability only adds cues.
    more = SynthConfig(iframe_cue=0.95, residual_cue=0.8, mv_cue=0.6)
    for k in range(10):
        for n in range(50):
            c, c_more = cues(config, k, n), cues(more, k, n)
            assert (c.top != c.bottom) <= (c_more.top != c_more.bottom)
            assert (c.motion, c.spots) == (c_more.motion, c_more.spots)
            assert c.motion in (STILL, MOTIONS[k].name)
    none = SynthConfig(iframe_cue=0.0, residual_cue=0.0, mv_cue=0.0)
    assert not any(any(cues_shown(cues(none, k, n)).values()) for k in range(10) for n in range(20))


def test_synth_json_records_which_cues_each_video_shows(dataset: Path) -> None:
    recorded = json.loads((dataset / "synth.json").read_text())["cues"]
    assert len(recorded) == 12 and all(all(v.values()) for v in recorded.values())


def test_list_classes_and_bad_arguments(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["synth", "--list-classes", "--classes", str(MAX_CLASSES)]) == 0
    table = capsys.readouterr().out
    assert all(synth_class(k).name in table for k in range(MAX_CLASSES))
    assert main(["synth", "--out", str(tmp_path), "--classes", str(MAX_CLASSES + 1)]) == 2
    assert main(["synth", "--out", str(tmp_path), "--size", "99x64"]) == 2
    assert "must be even" in capsys.readouterr().err
    assert main(["synth"]) == 2
    assert list(tmp_path.iterdir()) == []
