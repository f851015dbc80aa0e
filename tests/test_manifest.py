"""Manifests from UCF-101's and HMDB-51's official split files, class-folder trees and CSVs.

The fake datasets below are written in the official layouts (file names, line formats and
line ends as the downloads have them) with empty placeholder videos; each builder also
returns what the listing means (id -> label, split), worked out from its own layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cvpipe.cli import main
from cvpipe.datasets import sources as sources
from cvpipe.datasets.manifest import (
    ManifestEntry,
    Source,
    SourceVideo,
    build_manifest,
    carve_split,
    read_manifest,
    video_id,
    write_manifest,
)

# --- UCF-101 -----------------------------------------------------------------------------

# (class as in classInd.txt and the directory, class as in the file names). The real
# dataset's one odd name is kept: directory HandstandPushups, files v_HandStandPushups_*.
UCF_CLASSES = [("ApplyEyeMakeup", "ApplyEyeMakeup"), ("Archery", "Archery"),
               ("HandstandPushups", "HandStandPushups")]
UCF_GROUPS = range(1, 7)
# Official split N tests groups 7(N-1)+1 .. 7N of 25; scaled down: two of six groups.
UCF_TEST_GROUPS = {1: {1, 2}, 2: {3, 4}, 3: {5, 6}}


def ucf_clips(group: int) -> int:
    return 2 + group % 3  # 3, 4, 2, 3, 4, 2 clips: groups differ in size as in the real set


def make_ucf(tmp: Path, ext: str = "avi") -> tuple[Path, Path, dict[str, tuple[int, str]]]:
    """ucfTrainTestlist/ and UCF-101/ under tmp, and id -> (label, split) for split 1."""
    lists, videos = tmp / "ucfTrainTestlist", tmp / "UCF-101"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i} {c}\r\n" for i, (c, _) in enumerate(UCF_CLASSES, 1)).encode())
    expected = {}
    for n, test_groups in UCF_TEST_GROUPS.items():
        train, test = [], []
        for i, (cls, in_name) in enumerate(UCF_CLASSES):
            for g in UCF_GROUPS:
                for c in range(1, ucf_clips(g) + 1):
                    rel = f"{cls}/v_{in_name}_g{g:02d}_c{c:02d}"
                    if g in test_groups:
                        test.append(f"{rel}.avi\r\n")
                    else:
                        train.append(f"{rel}.avi {i + 1}\r\n")
                    if n == 1:
                        (videos / cls).mkdir(parents=True, exist_ok=True)
                        (videos / f"{rel}.{ext}").touch()
                        expected[rel.replace("/", "_")] = (i, "test" if g in test_groups else "train")
        (lists / f"trainlist0{n}.txt").write_bytes("".join(train).encode())
        (lists / f"testlist0{n}.txt").write_bytes("".join(test).encode())
    return lists, videos, expected


def as_table(entries: list[ManifestEntry]) -> dict[str, tuple[int, str]]:
    return {e.id: (e.label, e.split) for e in entries}


def test_ucf101_official_split_parses_exactly(tmp_path):
    lists, videos, expected = make_ucf(tmp_path)
    build = build_manifest(sources.ucf101(lists, videos, split_number=1))
    assert build.ok and not build.warnings and not build.missing
    assert build.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert as_table(build.entries) == expected
    entry = next(e for e in build.entries if e.id == "HandstandPushups_v_HandStandPushups_g01_c02")
    assert entry == ManifestEntry("HandstandPushups_v_HandStandPushups_g01_c02",
                                  str(videos / "HandstandPushups/v_HandStandPushups_g01_c02.avi"),
                                  2, "HandstandPushups", "test")
    # 3 classes x groups 1-2 (3 + 4 clips) in test, groups 3-6 (2 + 3 + 4 + 2) in train
    assert Counter(e.split for e in build.entries) == {"test": 21, "train": 33}
    assert [e.split for e in build.entries] == sorted((e.split for e in build.entries), key=["train", "val", "test"].index)


def test_ucf101_other_split_numbers_use_their_lists(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    for n, groups in UCF_TEST_GROUPS.items():
        build = build_manifest(sources.ucf101(lists, videos, split_number=n))
        assert build.ok
        test_groups = {e.id.rsplit("_g", 1)[1][:2] for e in build.entries if e.split == "test"}
        assert test_groups == {f"{g:02d}" for g in groups}
        assert len(build.entries) == 54


def test_ucf101_reencoded_extension_keeps_ids(tmp_path):
    lists, videos, expected = make_ucf(tmp_path, ext="m4v")
    build = build_manifest(sources.ucf101(lists, videos, ext=".m4v"))
    assert build.ok and as_table(build.entries) == expected
    assert all(e.path.endswith(".m4v") for e in build.entries)
    # the same tree read as listed (.avi) finds nothing
    plain = build_manifest(sources.ucf101(lists, videos))
    assert len(plain.missing) == 54 and not plain.ok


def test_ucf101_val_carved_by_group_deterministically(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    first = build_manifest(sources.ucf101(lists, videos), val_fraction=0.25)
    again = build_manifest(sources.ucf101(lists, videos), val_fraction=0.25)
    assert first.ok and first.entries == again.entries
    # listing order plays no part: reversed train lists give the same manifest
    train_list = lists / "trainlist01.txt"
    train_list.write_bytes(b"".join(reversed(train_list.read_bytes().splitlines(keepends=True))))
    assert build_manifest(sources.ucf101(lists, videos), val_fraction=0.25).entries == first.entries

    group = {e.id: e.id.rsplit("_c", 1)[0] for e in first.entries}
    sides = {}
    for e in first.entries:
        sides.setdefault(group[e.id], set()).add(e.split)
    assert all(len(s) == 1 for s in sides.values()), "a group is split between train and val"
    per_class = Counter((e.label, e.split) for e in first.entries)
    for label in range(3):
        train_total = per_class[label, "train"] + per_class[label, "val"]
        assert train_total == 11 and per_class[label, "test"] == 7
        # target round(0.25 * 11) = 3; groups of 2-4 clips get within one group of it
        assert 1 <= per_class[label, "val"] <= 5 and per_class[label, "train"] >= 2


def test_ucf101_errors_name_file_and_line(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    train, test = lists / "trainlist01.txt", lists / "testlist01.txt"
    lines = train.read_bytes().decode().splitlines(keepends=True)
    lines[0] = "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\r\n"        # label missing
    lines[1] = "Archery/v_Archery_g03_c01.avi 1\r\n"                    # 1 is ApplyEyeMakeup
    lines[2] = "YoYo/v_YoYo_g03_c01.avi 3\r\n"                          # not in classInd
    lines[3] = "ApplyEyeMakeup/clip.avi 1\r\n"                          # no gXX_cYY
    train.write_bytes("".join(lines).encode())
    with test.open("ab") as f:
        f.write(b"Archery/v_Archery_g01_c01.avi 2\r\n")                  # testlist lines have no label
    build = build_manifest(sources.ucf101(lists, videos))
    messages = [str(p) for p in build.errors]
    assert messages == [
        f"{train}:1: malformed line 'ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi': "
        "expected '<Class>/<video>.avi <class index>'",
        f"{train}:2: class index 1 does not match the class directory 'Archery' (index 2 in classInd.txt)",
        f"{train}:3: unknown class 'YoYo' (not in classInd.txt)",
        f"{train}:4: malformed path 'ApplyEyeMakeup/clip.avi': expected '<Class>/v_<Class>_gXX_cYY.avi'",
        f"{test}:22: malformed line 'Archery/v_Archery_g01_c01.avi 2': expected '<Class>/<video>.avi'",
    ]
    assert len(build.entries) == 54 - 4


def test_ucf101_class_index_file_errors(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    class_ind = lists / "classInd.txt"
    class_ind.write_bytes(b"1 ApplyEyeMakeup\r\n1 Archery\r\nthree HandstandPushups\r\n4 YoYo\r\n")
    build = build_manifest(sources.ucf101(lists, videos))
    assert [str(p) for p in build.errors[:4]] == [
        f"{class_ind}:2: class index 1 given twice",
        f"{class_ind}:3: malformed line 'three HandstandPushups': expected '<index from 1> <ClassName>'",
        f"{class_ind}: class indices are not 1..2: [2] missing",
        f"{lists / 'trainlist01.txt'}:12: unknown class 'Archery' (not in classInd.txt)",
    ]


def test_ucf101_missing_lists_and_videos(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    (lists / "testlist01.txt").unlink()
    gone = videos / "Archery/v_Archery_g03_c02.avi"
    gone.unlink()
    build = build_manifest(sources.ucf101(lists, videos))
    assert [p.where for p in build.errors] == [str(lists / "testlist01.txt"), f"{lists / 'trainlist01.txt'}:13"]
    assert build.errors[0].message.startswith("cannot read:")
    assert build.errors[1].message == f"missing video file {gone}"
    allowed = build_manifest(sources.ucf101(lists, videos), allow_missing=True)
    assert [str(p) for p in allowed.missing] == [f"{lists / 'trainlist01.txt'}:13: missing video file {gone}"]
    assert "Archery_v_Archery_g03_c02" not in as_table(allowed.entries)
    assert len(allowed.entries) == 32 and len(allowed.errors) == 1  # the test list is still an error


def test_ucf101_duplicates_and_empty_classes(tmp_path):
    lists, videos, _ = make_ucf(tmp_path)
    train, test = lists / "trainlist01.txt", lists / "testlist01.txt"
    with train.open("ab") as f:
        f.write(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")   # also in the test list
    # HandstandPushups loses its test videos: a warning; a fourth class has none: an error
    test.write_bytes(b"".join(l for l in test.read_bytes().splitlines(keepends=True)
                              if not l.startswith(b"Handstand")))
    with (lists / "classInd.txt").open("ab") as f:
        f.write(b"4 YoYo\r\n")
    build = build_manifest(sources.ucf101(lists, videos))
    first = videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    assert [str(p) for p in build.errors] == [
        f"{test}:1: duplicate id 'ApplyEyeMakeup_v_ApplyEyeMakeup_g01_c01': {first} listed twice "
        f"(first at {train}:34)",
        f"{lists}: class 'YoYo' has no videos",
    ]
    assert [str(p) for p in build.warnings] == [f"{lists}: class 'HandstandPushups' has no videos in test"]


# --- HMDB-51 -----------------------------------------------------------------------------

# class -> [(video, code in split 1)], names in the real dataset's style and characters
HMDB = {
    "brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1), ("April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 1),
                   ("April_09_brush_hair_u_nm_np1_ba_goo_2.avi", 2),
                   ("Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi", 1),
                   ("My_Hair_Routine_brush_hair_h_nm_np1_le_goo_0.avi", 0)],
    "cartwheel": [("(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi", 1),
                  ("Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_ba_bad_8.avi", 2),
                  ("Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi", 1)],
    "climb_stairs": [("#20_Rhythm_climb_stairs_f_nm_np1_ri_med_1.avi", 2), ("Basic_Climb_climb_stairs_f_cm_np1_fr_med_0.avi", 1),
                     ("Basic_Climb_climb_stairs_f_cm_np1_fr_med_1.avi", 1), ("Stairs_climb_stairs_f_nm_np1_le_goo_3.avi", 0)],
}


def make_hmdb(tmp: Path) -> tuple[Path, Path, dict[str, tuple[int, str]]]:
    splits, videos = tmp / "testTrainMulti_7030_splits", tmp / "hmdb51"
    splits.mkdir()
    expected = {}
    for label, (cls, clips) in enumerate(sorted(HMDB.items())):
        (videos / cls).mkdir(parents=True)
        for n in (1, 2, 3):
            # other splits: the codes rotated, so reading the wrong file shows
            codes = [code if n == 1 else (code % 2) + 1 for _, code in clips]
            (splits / f"{cls}_test_split{n}.txt").write_text(
                "".join(f"{name} {code} \n" for (name, _), code in zip(clips, codes)))
        for name, code in clips:
            (videos / cls / name).touch()
            if code:
                vid = f"{cls}_{name[:-4]}".replace("(", "_").replace(")", "_").replace("!", "_").replace("#", "_")
                expected[vid] = (label, {1: "train", 2: "test"}[code])
    return splits, videos, expected


def test_hmdb51_official_split_parses_exactly(tmp_path):
    splits, videos, expected = make_hmdb(tmp_path)
    build = build_manifest(sources.hmdb51(splits, videos, split_number=1))
    assert build.ok and not build.warnings
    assert build.classes == ["brush_hair", "cartwheel", "climb_stairs"]
    assert as_table(build.entries) == expected
    assert "cartwheel__Rad_Schlag_die_Bank__cartwheel_f_cm_np1_le_med_0" in expected
    assert build.unused == 2 and "unused 2" in build.summary()
    assert Counter(e.split for e in build.entries) == {"train": 7, "test": 3}
    split2 = build_manifest(sources.hmdb51(splits, videos, split_number=2))
    assert split2.unused == 0 and Counter(e.split for e in split2.entries) == {"train": 5, "test": 7}


def test_hmdb51_val_keeps_a_source_film_together(tmp_path):
    splits, videos, _ = make_hmdb(tmp_path)
    build = build_manifest(sources.hmdb51(splits, videos), val_fraction=0.5)
    assert build.ok
    by_id = {e.id: e.split for e in build.entries}
    # the two train clips of film April_09 (and of Basic_Climb) move together
    assert by_id["brush_hair_April_09_brush_hair_u_nm_np1_ba_goo_0"] == by_id["brush_hair_April_09_brush_hair_u_nm_np1_ba_goo_1"]
    assert by_id["climb_stairs_Basic_Climb_climb_stairs_f_cm_np1_fr_med_0"] == by_id["climb_stairs_Basic_Climb_climb_stairs_f_cm_np1_fr_med_1"]
    assert Counter(by_id.values()) == {"train": 4, "val": 3, "test": 3}
    assert build_manifest(sources.hmdb51(splits, videos), val_fraction=0.5).entries == build.entries


def test_hmdb51_errors(tmp_path):
    splits, videos, _ = make_hmdb(tmp_path)
    cartwheel = splits / "cartwheel_test_split1.txt"
    with cartwheel.open("a") as f:
        f.write("Bodenturnen_2004_cartwheel_f_cm_np1_le_med_1.avi 3 \n")    # no such code
        f.write("Bodenturnen_2004_cartwheel_f_cm_np1_le_med_2.avi\n")      # no code
    (splits / "dive_test_split1.txt").write_text("Dive_dive_f_cm_np1_fr_bad_0.avi 0 \n")  # only unused
    (videos / "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi").unlink()
    build = build_manifest(sources.hmdb51(splits, videos))
    assert [str(p) for p in build.errors] == [
        f"{cartwheel}:4: malformed line 'Bodenturnen_2004_cartwheel_f_cm_np1_le_med_1.avi 3': expected '<video>.avi <0|1|2>'",
        f"{cartwheel}:5: malformed line 'Bodenturnen_2004_cartwheel_f_cm_np1_le_med_2.avi': expected '<video>.avi <0|1|2>'",
        f"{splits / 'brush_hair_test_split1.txt'}:3: missing video file {videos / 'brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi'}",
        f"{splits}: class 'dive' has no videos",
    ]
    assert build.unused == 3
    empty = build_manifest(sources.hmdb51(tmp_path / "videos-only", videos))
    assert [p.message for p in empty.errors][0].startswith("cannot list:")
    (tmp_path / "empty").mkdir()
    assert [str(p) for p in build_manifest(sources.hmdb51(tmp_path / "empty", videos)).errors] == [
        f"{tmp_path / 'empty'}: no '<class>_test_split1.txt' files"]


# --- folder tree and CSV -----------------------------------------------------------------

def make_folder(tmp: Path) -> Path:
    root = tmp / "tree"
    files = ["walk/w0.mp4", "walk/w1.MKV", "walk/w2.avi", "walk/day.2/w3.webm", "walk/notes.txt", "walk/.hidden.mp4",
             "Run/r0.mp4", "Run/r1.mp4", "Run/clip.v2.mp4", "jump/j0.m4v", "jump/j1.m4v", "stray.mp4"]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    return root


def test_folder_tree_parses_exactly(tmp_path):
    root = make_folder(tmp_path)
    build = build_manifest(sources.folder(root))
    assert build.ok
    assert build.classes == ["Run", "jump", "walk"]      # sorted by code point: capitals first
    assert as_table(build.entries) == {
        "Run_r0": (0, "train"), "Run_r1": (0, "train"), "Run_clip_v2": (0, "train"),
        "jump_j0": (1, "train"), "jump_j1": (1, "train"),
        "walk_w0": (2, "train"), "walk_w1": (2, "train"), "walk_w2": (2, "train"), "walk_day_2_w3": (2, "train")}
    assert [str(p) for p in build.warnings] == [f"{root / 'stray.mp4'}: video outside any class folder, left out"]


def test_folder_splits_are_exact_per_class_and_independent_of_listing(tmp_path):
    root = tmp_path / "many"
    for cls, n in (("a", 20), ("b", 10), ("c", 7)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.avi").touch()
    build = build_manifest(sources.folder(root), val_fraction=0.2, test_fraction=0.3)
    counts = Counter((e.label_name, e.split) for e in build.entries)
    # test: round(0.3 n) of each class; val: round(0.2 n) as near as the rest allows (0.2/0.7 of it)
    assert counts == {("a", "test"): 6, ("a", "val"): 4, ("a", "train"): 10,
                      ("b", "test"): 3, ("b", "val"): 2, ("b", "train"): 5,
                      ("c", "test"): 2, ("c", "val"): 1, ("c", "train"): 4}
    source = sources.folder(root)
    shuffled = Source(source.location, source.classes, source.videos[::-1])
    assert build_manifest(shuffled, val_fraction=0.2, test_fraction=0.3).entries == build.entries
    with pytest.raises(ValueError, match="sum to less than 1"):
        build_manifest(source, val_fraction=0.5, test_fraction=0.5)


def test_folder_id_collision_and_empty_class(tmp_path):
    root = make_folder(tmp_path)
    (root / "Run/clip_v2.avi").touch()     # same id as Run/clip.v2.mp4
    (root / "empty").mkdir()
    build = build_manifest(sources.folder(root))
    assert [str(p) for p in build.errors] == [
        f"{root / 'Run/clip_v2.avi'}: duplicate id 'Run_clip_v2': {root / 'Run/clip_v2.avi'} and "
        f"{root / 'Run/clip.v2.mp4'} (first at {root / 'Run/clip.v2.mp4'})",
        f"{root}: class 'empty' has no videos",
    ]


def test_csv_with_header_names_and_split(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        (tmp_path / "v" / name).touch()
    table = tmp_path / "list.csv"
    table.write_text("split,path,label\r\ntrain,v/a.mp4,swim\r\ntest,v/b.mp4,run\r\n\r\n,./v/c.mp4,swim\r\nval,v/d.mp4,run\r\n")
    build = build_manifest(sources.csv_files([table]))
    assert build.ok and build.classes == ["run", "swim"]
    assert build.entries == [
        ManifestEntry("v_a", str(tmp_path / "v/a.mp4"), 1, "swim", "train"),
        ManifestEntry("v_c", str(tmp_path / "v/c.mp4"), 1, "swim", "train"),
        ManifestEntry("v_d", str(tmp_path / "v/d.mp4"), 0, "run", "val"),
        ManifestEntry("v_b", str(tmp_path / "v/b.mp4"), 0, "run", "test"),
    ]


def test_csv_without_header_indices_and_class_list(tmp_path):
    for name in ("x0.avi", "x1.avi", "x2.avi"):
        (tmp_path / name).touch()
    table = tmp_path / "rows.csv"
    table.write_text("x0.avi,0\nx1.avi,2\nx2.avi,1\n")
    plain = build_manifest(sources.csv_files([table], video_root=tmp_path))
    assert plain.classes == ["0", "1", "2"] and as_table(plain.entries) == {"x0": (0, "train"), "x1": (2, "train"), "x2": (1, "train")}
    names = tmp_path / "classes.txt"
    names.write_text("fall\nsit\nstand\n")
    table.write_text("x0.avi,sit\nx1.avi,2\nx2.avi,fall\n")
    named = build_manifest(sources.csv_files([table], classes_file=names))
    assert named.ok and [(e.id, e.label_name) for e in named.entries] == [("x2", "fall"), ("x0", "sit"), ("x1", "stand")]


def test_csv_errors(tmp_path):
    (tmp_path / "a.avi").touch()
    table = tmp_path / "bad.csv"
    table.write_text("path,label,split\na.avi,0,\nb.avi,1,holdout\nc.avi\n,0\nd.avi,0,train,extra\n")
    build = build_manifest(sources.csv_files([table]))
    assert [str(p) for p in build.errors] == [
        f"{table}:3: split 'holdout' is not one of train, val, test",
        f"{table}:4: malformed row ['c.avi']: expected path,label,split with path and label set",
        f"{table}:5: malformed row ['', '0']: expected path,label,split with path and label set",
        f"{table}:6: malformed row ['d.avi', '0', 'train', 'extra']: expected path,label,split with path and label set",
        f"{table}: class '1' has no videos",
    ]
    table.write_text("a.avi,walk\nb.avi,1\n")
    assert [p.message for p in build_manifest(sources.csv_files([table])).errors] == [
        "labels mix class names and indices: give the class list (--classes)"]
    names = tmp_path / "classes.txt"
    names.write_text("walk\n")
    assert [str(p) for p in build_manifest(sources.csv_files([table], classes_file=names)).errors] == [
        f"{table}:2: unknown class '1'"]
    table.write_text("file,class\na.avi,walk\n")   # not a header: a row with a missing file
    assert [p.message for p in build_manifest(sources.csv_files([table])).errors] == [
        f"missing video file {tmp_path / 'file'}", "class 'class' has no videos"]
    table.write_text("path,label,group\na.avi,walk,1\n")
    assert [str(p) for p in build_manifest(sources.csv_files([table])).errors] == [
        f"{table}:1: header ['path', 'label', 'group']: columns must be path, label and optionally split, each once"]
    table.write_text("")
    assert [str(p) for p in build_manifest(sources.folder(tmp_path / "none")).errors][0].startswith(
        f"{tmp_path / 'none'}: cannot list:")
    assert [str(p) for p in build_manifest(sources.csv_files([table])).errors] == [f"{table}: no classes found"]


# --- ids, carving, the file format ---------------------------------------------------------

def test_video_ids_are_keys_without_dots():
    assert video_id("Archery/v_Archery_g01_c01.avi") == "Archery_v_Archery_g01_c01"
    assert video_id("Archery/v_Archery_g01_c01.m4v") == "Archery_v_Archery_g01_c01"
    assert video_id("./a b/c.d.e.mp4") == "a_b_c_d_e"
    assert video_id("/abs/x-1.avi") == "abs_x-1"
    with pytest.raises(ValueError, match="made of A-Z"):
        ManifestEntry("a.b", "a.b.avi", 0, "a", "train")


def test_carve_split_leaves_other_splits_and_one_group(tmp_path):
    videos = [SourceVideo(f"{i}", f"{i}", 0, "train", f"g{i // 2}", "", ".") for i in range(6)]
    videos.append(SourceVideo("t", "t", 0, "test", "g9", "", "."))
    carved = carve_split(videos, 0.99, "val")
    assert Counter(v.split for v in carved) == {"val": 4, "train": 2, "test": 1}
    assert len({v.group for v in carved if v.split == "train"}) == 1
    assert carve_split(videos, 0.0, "val") == videos


def test_manifest_round_trip(tmp_path):
    entries = [ManifestEntry("a_b", "/v/a b.avi", 1, "Ärger", "val"), ManifestEntry("c", "c.m4v", 0, "x", "test")]
    path = tmp_path / "m.jsonl"
    write_manifest(entries, path)
    assert read_manifest(path) == entries
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0]) == {
        "id": "a_b", "path": "/v/a b.avi", "label": 1, "label_name": "Ärger", "split": "val"}
    assert not (tmp_path / "m.jsonl.tmp").exists()
    path.write_text(path.read_text() + '{"id": "x.y", "path": "p", "label": 0, "label_name": "x", "split": "train"}\n')
    with pytest.raises(ValueError, match=rf"{path}:3: bad manifest line"):
        read_manifest(path)


# --- command line ------------------------------------------------------------------------

def test_cli_ucf101_writes_manifest_and_summary(tmp_path, capsys):
    lists, videos, expected = make_ucf(tmp_path)
    out = tmp_path / "ucf.jsonl"
    assert main(["manifest", "ucf101", str(lists), "--video-root", str(videos), "--out", str(out),
                 "--val-fraction", "0.25"]) == 0
    stdout = capsys.readouterr().out.splitlines()
    entries = read_manifest(out)
    assert {e.id for e in entries} == set(expected)
    val = sum(e.split == "val" for e in entries)
    assert stdout == [f"54 videos in 3 classes (train {33 - val}, val {val}, test 21); "
                      "missing 0, unused 0, warnings 0, errors 0", f"wrote {out}"]


def test_cli_failures_write_nothing_and_allow_missing_lists(tmp_path, capsys):
    root = make_folder(tmp_path)
    (root / "walk/w0.mp4").unlink()
    (root / "empty").mkdir()
    out = tmp_path / "m.jsonl"
    assert main(["manifest", "folder", str(root), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert not out.exists()
    assert captured.err.splitlines() == [f"error: {root}: class 'empty' has no videos",
                                         f"warning: {root / 'stray.mp4'}: video outside any class folder, left out"]
    assert captured.out.splitlines()[-1] == "no manifest written: 1 error(s)"

    (root / "empty").rmdir()
    table = tmp_path / "t.csv"
    table.write_text(f"{root}/walk/w0.mp4,walk\n{root}/walk/w1.MKV,walk\n")
    assert main(["manifest", "csv", str(table), "--out", str(out)]) == 1
    assert "error: " + f"{table}:1: missing video file {root}/walk/w0.mp4" in capsys.readouterr().err
    assert main(["manifest", "csv", str(table), "--out", str(out), "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"left out: {table}:1: missing video file {root}/walk/w0.mp4"]
    assert "1 videos in 1 classes (train 1, val 0, test 0); missing 1," in captured.out
    assert [e.id for e in read_manifest(out)] == [video_id(f"{root}/walk/w1.MKV")]


def test_cli_rejects_bad_options(tmp_path, capsys):
    root = make_folder(tmp_path)
    with pytest.raises(SystemExit):
        main(["manifest", "folder", str(root), "--out", "x", "--val-fraction", "1.5"])
    with pytest.raises(SystemExit):
        main(["manifest", "hmdb51", str(root), "--video-root", str(root), "--out", "x", "--split-number", "4"])
    assert main(["manifest", "folder", str(root), "--out", "x", "--val-fraction", "0.6", "--test-fraction", "0.6"]) == 2
    assert "sum to less than 1" in capsys.readouterr().err


def test_cli_output_is_identical_across_processes(tmp_path):
    """Python's str hash differs per process; the carved splits must not."""
    splits, videos, _ = make_hmdb(tmp_path)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"m{seed}.jsonl"
        subprocess.run([sys.executable, "-c", "import sys; from cvpipe.cli import main; sys.exit(main())",
                        "manifest", "hmdb51", str(splits), "--video-root", str(videos), "--out", str(out),
                        "--val-fraction", "0.5"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b'"split": "val"') == 3


def test_a_fifo_listed_in_a_csv_is_refused_by_name(tmp_path, capsys):
    root = make_folder(tmp_path)
    fifo = root / "walk" / "live.mp4"
    os.mkfifo(fifo)
    table = tmp_path / "t.csv"
    table.write_text(f"{fifo},walk\n{root}/walk/w1.MKV,walk\n")
    assert main(["manifest", "csv", str(table), "--out", str(tmp_path / "m.jsonl")]) == 1
    assert f"error: {table}:1: not a regular file {fifo}" in capsys.readouterr().err


def test_listed_paths_outside_the_dataset_root_are_refused_by_line(tmp_path, capsys):
    root = make_folder(tmp_path)
    outside = root.parent / "outside.m4v"
    outside.write_bytes(b"x")
    table = root / "list.csv"
    table.write_text(f"walk/w1.MKV,walk\n../outside.m4v,walk\n{outside},walk\n../../../../../../../etc/hostname,walk\n")
    out = tmp_path / "m.jsonl"
    assert main(["manifest", "csv", str(table), "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {table}:{n}: {path} is outside the dataset root {root} (--allow-outside-root takes it)"
                      for n, path in ((2, root / "../outside.m4v"), (3, outside),
                                      (4, root / "../../../../../../../etc/hostname"))]
    assert not out.exists()
    assert main(["manifest", "csv", str(table), "--out", str(out), "--allow-outside-root"]) == 0
    assert sorted(e.path for e in read_manifest(out)) == sorted([str(root / "walk/w1.MKV"), str(outside), str(outside),
                                                                "/etc/hostname"])


BAD_LINES = {  # field overrides of a good line -> what the message says
    '"id": "a\\u0000b"': "id 'a\\x00b' must be non-empty",
    '"id": "a.b"': "id 'a.b' must be",
    '"label": 1.5': "label 1.5 is not a class index",
    '"label": true': "label True is not a class index",
    '"label": "3"': "label '3' is not a class index",
    '"label": null': "label None is not a class index",
    '"label": -1': "label -1 is not a class index",
    '"label": 1000000, "label_name": "jump"': "label 1000000 is not below the number of classes, 3",
    '"label_name": "run"': "label 0 is named 'run', on line 1 'walk'",
    '"label": 2, "label_name": "walk"': "class 'walk' has label 2, on line 1 0",
    '"id": "v0"': "id 'v0' again (first on line 1)",
    '"split": "dev"': "split 'dev' is not one of",
}


@pytest.mark.parametrize("override", list(BAD_LINES))
def test_manifest_lines_are_checked_naming_the_line(tmp_path, override):
    def line(vid, label, name, extra=""):
        fields = f'"id": "{vid}", "path": "/v/{vid}.m4v", "label": {label}, "label_name": "{name}", "split": "train"'
        return "{" + fields + (", " + extra if extra else "") + "}\n"

    path = tmp_path / "m.jsonl"
    # JSON takes the last value of a repeated key: the override wins.
    path.write_text(line("v0", 0, "walk") + line("v1", 1, "run") + line("v2", 0, "walk", override))
    with pytest.raises(ValueError) as raised:
        read_manifest(path)
    assert str(raised.value).startswith(f"{path}:3: "), raised.value
    assert BAD_LINES[override] in str(raised.value)


def test_a_manifest_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"id": "v0", "path": "/v", "label": 0, "label_name": "walk", "split": "train"}\n'
                     b'{"id": "v1", "path": "/v\xff", "label": 0, "label_name": "walk", "split": "train"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text"):
        read_manifest(path)
