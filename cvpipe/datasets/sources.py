"""Parsers of dataset listings: UCF-101's and HMDB-51's official split files, a
folder-per-class tree, and CSV files. Each returns a `cvpipe.datasets.manifest.Source`: the classes,
the videos with their official splits, and every line it could not use (file:line and why).
Validation that all sources share (ids, missing files, empty classes) is in
`cvpipe.datasets.manifest.build_manifest`.

Official layouts, as the downloads unpack:

- UCF-101 (`UCF101TrainTestSplits-RecognitionTask.zip` -> `ucfTrainTestlist/`):
  `classInd.txt` lines "1 ApplyEyeMakeup" (1-based); `trainlistNN.txt` lines
  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"; `testlistNN.txt` lines
  "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" (the class is the directory). CRLF line
  ends. Videos at `UCF-101/<Class>/<video>.avi`. Note the one odd name: the directory
  `HandstandPushups` holds `v_HandStandPushups_gXX_cYY.avi`; the class always comes from
  the directory.
- HMDB-51 (`test_train_splits.rar` -> `testTrainMulti_7030_splits/`): one file per class and
  split, `<class>_test_split<N>.txt`, lines "<video>.avi <code> " (a trailing space) with
  code 1 = train, 2 = test, 0 = in neither. Videos at `<root>/<class>/<video>.avi`.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from pathlib import Path
from typing import Iterable, Sequence

from cvpipe.datasets.manifest import SPLITS, Problem, Source, SourceVideo

# Extensions a folder-per-class tree is searched for (lower case, without the dot).
VIDEO_EXTENSIONS = ("avi", "m4v", "mp4", "mkv", "mov", "webm", "mpg", "mpeg", "wmv", "flv")

_UCF_GROUP = re.compile(r"_g(\d+)_c\d+$")


def _read_lines(path: Path, errors: list[Problem]) -> list[tuple[int, str]]:
    """Numbered, stripped, non-blank lines; an unreadable file is recorded as an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        errors.append(Problem(str(path), f"cannot read: {e}"))
        return []
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _on_disk(relative: str, ext: str | None) -> str:
    """The relative path of a listed video on disk, after re-encoding changed its extension."""
    return posixpath.splitext(relative)[0] + "." + ext.lstrip(".") if ext else relative


def _ucf_classes(path: Path, errors: list[Problem]) -> list[str]:
    by_index: dict[int, str] = {}
    for number, line in _read_lines(path, errors):
        parts = line.split()
        where = f"{path}:{number}"
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
            errors.append(Problem(where, f"malformed line {line!r}: expected '<index from 1> <ClassName>'"))
        elif int(parts[0]) in by_index:
            errors.append(Problem(where, f"class index {parts[0]} given twice"))
        elif parts[1] in by_index.values():
            errors.append(Problem(where, f"class {parts[1]!r} given twice"))
        else:
            by_index[int(parts[0])] = parts[1]
    gaps = sorted(set(range(1, len(by_index) + 1)) - set(by_index))
    if gaps:
        errors.append(Problem(str(path), f"class indices are not 1..{len(by_index)}: {gaps} missing"))
    return [by_index[i] for i in sorted(by_index)]


def ucf101(splits_dir: str | os.PathLike, video_root: str | os.PathLike, split_number: int = 1,
           ext: str | None = None) -> Source:
    """UCF-101's official split `split_number` (1, 2 or 3): train and test lists, classInd.

    `ext` (e.g. "m4v") is the extension of the videos under `video_root` when they were
    re-encoded keeping the relative paths; ids do not depend on it. The group of a video
    (`gXX` in its name) keeps one actor/scene on one side of a carved val split.
    """
    if split_number not in (1, 2, 3):
        raise ValueError(f"UCF-101 split number {split_number} is not one of 1, 2, 3")
    splits_dir = Path(splits_dir)
    errors: list[Problem] = []
    classes = _ucf_classes(splits_dir / "classInd.txt", errors)
    index = {name: i for i, name in enumerate(classes)}
    videos = []
    for split, list_path in (("train", splits_dir / f"trainlist0{split_number}.txt"),
                             ("test", splits_dir / f"testlist0{split_number}.txt")):
        expected = "'<Class>/<video>.avi <class index>'" if split == "train" else "'<Class>/<video>.avi'"
        for number, line in _read_lines(list_path, errors):
            where = f"{list_path}:{number}"
            parts = line.split()
            if len(parts) != (2 if split == "train" else 1) or (split == "train" and not parts[1].isdigit()):
                errors.append(Problem(where, f"malformed line {line!r}: expected {expected}"))
                continue
            relative = parts[0]
            class_dir, _, name = relative.partition("/")
            group = _UCF_GROUP.search(posixpath.splitext(name)[0])
            if not name or "/" in name or group is None:
                errors.append(Problem(where, f"malformed path {relative!r}: expected "
                                             "'<Class>/v_<Class>_gXX_cYY.avi'"))
                continue
            if class_dir not in index:
                errors.append(Problem(where, f"unknown class {class_dir!r} (not in classInd.txt)"))
                continue
            label = index[class_dir]
            if split == "train" and int(parts[1]) != label + 1:
                errors.append(Problem(where, f"class index {parts[1]} does not match the class "
                                             f"directory {class_dir!r} (index {label + 1} in classInd.txt)"))
                continue
            videos.append(SourceVideo(relative, os.path.join(video_root, _on_disk(relative, ext)), label,
                                      split, f"{class_dir}/g{int(group[1]):02d}", where, str(video_root)))
    return Source(str(splits_dir), classes, videos, errors)


def _hmdb_source_film(class_name: str, stem: str) -> str:
    """HMDB-51 names clips `<film>_<class>_<body>_<camera>_<people>_<view>_<quality>_<clip>`:
    the clips of one film (everything before the six tags) form a group."""
    parts = stem.rsplit("_", 6)
    return f"{class_name}/{parts[0] if len(parts) == 7 else stem}"


def hmdb51(splits_dir: str | os.PathLike, video_root: str | os.PathLike, split_number: int = 1,
           ext: str | None = None) -> Source:
    """HMDB-51's official split `split_number` from `<class>_test_split<N>.txt` files.

    Classes are the file names' class parts, sorted (index = label). Code 0 lines are
    counted in `Source.unused` and left out. Clips cut from one film form a group.
    """
    if split_number not in (1, 2, 3):
        raise ValueError(f"HMDB-51 split number {split_number} is not one of 1, 2, 3")
    splits_dir = Path(splits_dir)
    errors: list[Problem] = []
    pattern = re.compile(rf"(.+)_test_split{split_number}\.txt")
    try:
        files = {m[1]: splits_dir / m[0] for m in map(pattern.fullmatch, os.listdir(splits_dir)) if m}
    except OSError as e:
        return Source(str(splits_dir), [], [], [Problem(str(splits_dir), f"cannot list: {e}")])
    if not files:
        errors.append(Problem(str(splits_dir), f"no '<class>_test_split{split_number}.txt' files"))
    classes = sorted(files)
    videos, unused = [], 0
    codes = {"1": "train", "2": "test"}
    for label, class_name in enumerate(classes):
        for number, line in _read_lines(files[class_name], errors):
            where = f"{files[class_name]}:{number}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2") or "/" in parts[0]:
                errors.append(Problem(where, f"malformed line {line!r}: expected '<video>.avi <0|1|2>'"))
                continue
            if parts[1] == "0":
                unused += 1
                continue
            relative = f"{class_name}/{parts[0]}"
            group = _hmdb_source_film(class_name, posixpath.splitext(parts[0])[0])
            videos.append(SourceVideo(relative, os.path.join(video_root, _on_disk(relative, ext)), label,
                                      codes[parts[1]], group, where, str(video_root)))
    return Source(str(splits_dir), classes, videos, errors, unused=unused)


def folder(root: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> Source:
    """A tree `<root>/<class>/.../<video>.<ext>`: classes are the sorted directory names.

    Every video is in train (carve val/test with `build_manifest`); hidden files and
    directories and files with other extensions are not videos. A video directly under
    `root` has no class: it is left out with a warning.
    """
    root = Path(root)
    extensions = {e.lower().lstrip(".") for e in extensions}

    def is_video(name: str) -> bool:
        return not name.startswith(".") and os.path.splitext(name)[1][1:].lower() in extensions

    try:
        top = sorted(os.scandir(root), key=lambda d: d.name)
    except OSError as e:
        return Source(str(root), [], [], [Problem(str(root), f"cannot list: {e}")])
    classes = [d.name for d in top if d.is_dir() and not d.name.startswith(".")]
    warnings = [Problem(d.path, "video outside any class folder, left out")
                for d in top if d.is_file() and is_video(d.name)]
    videos = []
    for label, class_name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / class_name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filter(is_video, filenames)):
                path = os.path.join(dirpath, name)
                relative = Path(path).relative_to(root).as_posix()
                videos.append(SourceVideo(relative, path, label, "train", relative, path, str(root)))
    return Source(str(root), classes, videos, warnings=warnings)


def _csv_rows(path: Path, errors: list[Problem]) -> list[tuple[str, dict[str, str] | str]]:
    """Per data row, in file order: (where, {"path", "label"[, "split"]}) or, for a row of
    the wrong shape, (where, what is wrong). The header is optional."""
    raw = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if any(c.strip() for c in row):
                    raw.append((f"{path}:{reader.line_num}", [c.strip() for c in row]))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        errors.append(Problem(str(path), f"cannot read: {e}"))
        return []
    columns, widths = ["path", "label", "split"], (2, 3)
    if raw and {"path", "label"} <= {c.lower() for c in raw[0][1]}:
        where, header = raw.pop(0)
        columns = [c.lower() for c in header]
        widths = (len(columns),)
        if set(columns) - {"path", "label", "split"} or len(set(columns)) != len(columns):
            errors.append(Problem(where, f"header {header}: columns must be path, label and "
                                         "optionally split, each once"))
            return []
    rows: list[tuple[str, dict[str, str] | str]] = []
    for where, cells in raw:
        row = dict(zip(columns, cells))
        if len(cells) not in widths or not row["path"] or not row["label"]:
            row = f"malformed row {cells}: expected {','.join(columns[:max(widths)])} with path and label set"
        rows.append((where, row))
    return rows


def csv_files(paths: Sequence[str | os.PathLike], video_root: str | os.PathLike | None = None,
              classes_file: str | os.PathLike | None = None) -> Source:
    """CSV files of `path,label[,split]` rows, with or without a header naming those columns.

    Relative paths are under `video_root`, by default the CSV's own directory. A label is
    a class name or a 0-based index: with `classes_file` (one name per line, in label order)
    either may be used (a name first); without it the labels must be all names (classes:
    the sorted names) or all indices (classes named by their index). An empty split is train.
    """
    errors: list[Problem] = []
    rows = [(csv_path, where, row) for csv_path in map(Path, paths)
            for where, row in _csv_rows(csv_path, errors)]
    labels = [row["label"] for _, _, row in rows if isinstance(row, dict)]
    if classes_file is not None:
        classes = [line for _, line in _read_lines(Path(classes_file), errors)]
    elif labels and all(label.isdigit() for label in labels):
        classes = [str(i) for i in range(max(map(int, labels)) + 1)]
    elif not any(label.isdigit() for label in labels):
        classes = sorted(set(labels))
    else:
        errors.append(Problem(", ".join(map(str, paths)), "labels mix class names and indices: "
                                                          "give the class list (--classes)"))
        return Source(", ".join(map(str, paths)), [], [], errors)
    index = {name: i for i, name in enumerate(classes)}
    videos = []
    for csv_path, where, row in rows:
        if isinstance(row, str):
            errors.append(Problem(where, row))
            continue
        label = index.get(row["label"])
        if label is None and row["label"].isdigit() and int(row["label"]) < len(classes):
            label = int(row["label"])
        if label is None:
            errors.append(Problem(where, f"unknown class {row['label']!r}"))
            continue
        split = row.get("split") or "train"
        if split not in SPLITS:
            errors.append(Problem(where, f"split {split!r} is not one of {', '.join(SPLITS)}"))
            continue
        relative = posixpath.normpath(row["path"].replace("\\", "/"))
        root = video_root if video_root is not None else csv_path.parent
        videos.append(SourceVideo(relative, os.path.join(root, relative), label, split, relative, where, str(root)))
    return Source(", ".join(map(str, paths)), classes, videos, errors)
