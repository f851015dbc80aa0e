"""The trainer's shard reader (trainer.data.shard_reader) against shards made by the real Ray job.

The reference for every tensor is independent of the reader: cvpipe.coviar.load on the
source video, quantised and normalised here with numpy as CoViAR's data loader does.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cvpipe import coviar
from cvpipe.shards import codec, schema
from trainer.config import load_config
from trainer.data.contract import report_skipped
from trainer.data.shard_reader import open_shards, read_manifest, sample_header, shard_samples
from trainer.train.distributed import Dist
from trainer.train.loop import fit

SIZE = 56  # the test view of a 64x64 video: shorter side 56 * 256 / 224 = 64 (no resize), centre crop 56
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture(scope="module")
def shards(ray_cluster, shard_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cvpipe.shards.job import ShardOptions, run_job

    out = tmp_path_factory.mktemp("reader") / "shards"
    result = run_job(shard_dataset.manifest, out, ShardOptions(), shard_size=2, progress=False)
    assert result.ok
    return out


def config(root: Path, modality: str, **data):
    overrides = [f"data.root={root}", f"model.modality={modality}", f"data.input_size={SIZE}",
                 "data.workers=0", "optim.batch_size=2", "model.width=8"]
    overrides += [f"data.{k}={v}" for k, v in data.items()]
    return load_config("tiny_synth", overrides)


def coviar_reference(path: str, gop: int, position: int, modality: str) -> np.ndarray:
    """CoViAR's network input for one segment, (C, SIZE, SIZE), from its loader API."""
    if modality == "iframe":
        x = coviar.load(path, gop, 0, coviar.IFRAME, True)[..., ::-1] / 255.0
        x = (x - MEAN) / STD
    elif modality == "mv":
        x = codec.quantise_mv(coviar.load(path, gop, position, coviar.MV, True)) / 255.0 - 0.5
    else:
        x = (codec.quantise_residual(coviar.load(path, gop, position, coviar.RESIDUAL, True)) / 255.0 - 0.5) / STD
    offset = (x.shape[0] - SIZE) // 2
    return x[offset:offset + SIZE, offset:offset + SIZE].transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("modality", ["iframe", "mv", "residual"])
def test_test_tensors_equal_coviar_normalisation_of_the_loader(shards: Path, shard_dataset, modality: str) -> None:
    data = open_shards(config(shards, modality, eval_segments=3), rank=0, world_size=1)
    paths = {e.id: e.path for e in shard_dataset.entries}
    seen = 0
    for batch in data.eval_batches("test"):
        for x, vid in zip(batch["input"], batch["id"]):
            video = coviar._open(paths[vid])
            for segment, tensor in enumerate(x):
                frame = schema.segment_centre(video.num_frames, 3, segment, schema.MV)
                gop, position = video.locate(frame)
                if position == 0:  # CoViAR: a GOP's first frame takes the previous GOP's last motion
                    gop, position = gop - 1, video.gop_size(gop - 1) - 1
                expected = coviar_reference(paths[vid], gop, position, modality)
                np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-5)
            seen += 1
    assert seen == data.split_size("test") == 2


OLDER_DEFAULTS = {
    2: {schema.IFRAME: codec.Encoding("png", level=1), schema.MV: codec.Encoding("npy.zst", level=3),
        schema.RESIDUAL: codec.Encoding("npy.zst", level=3)},
    3: {schema.IFRAME: codec.Encoding("delta.npy.zst", level=3), schema.MV: codec.Encoding("npy.zst", level=3),
        schema.RESIDUAL: codec.Encoding("delta.npy.zst", level=3)},
}


@pytest.mark.parametrize("version", sorted(OLDER_DEFAULTS))
def test_shards_in_older_versions_default_encodings_give_the_same_batches(ray_cluster, shard_dataset, shards: Path,
                                                                         tmp_path: Path, version: int) -> None:
    """Version 2's (PNG I-frames, plain zstd) and 3's (row deltas, (H, W, C) arrays)
    against the filtered planes of version 4."""
    from cvpipe.shards.job import ShardOptions, run_job

    old = OLDER_DEFAULTS[version]
    assert run_job(shard_dataset.manifest, tmp_path / "old", ShardOptions(encodings=old), shard_size=2,
                   progress=False).ok

    def batches(root: Path) -> list:
        data = open_shards(config(root, "iframe"), rank=0, world_size=1, modalities=("mv", "residual"))
        it = iter(data.train_batches(2))
        return list(data.eval_batches("val")) + [next(it) for _ in range(2)]

    for a, b in zip(batches(shards), batches(tmp_path / "old"), strict=True):
        assert a["id"] == b["id"]
        assert all(torch.equal(a["inputs"][m], b["inputs"][m]) for m in a["inputs"])


def test_reading_by_index_or_streaming_gives_the_same_batches(shards: Path) -> None:
    def batches(read: str, epoch: int | None):
        data = open_shards(config(shards, "iframe", read=read), rank=0, world_size=1, modalities=("mv", "residual"))
        if epoch is None:
            return list(data.eval_batches("val"))
        it = iter(data.train_batches(epoch))
        return [next(it) for _ in range(3)]

    for epoch in (None, 1):
        for a, b in zip(batches("index", epoch), batches("stream", epoch), strict=True):
            assert a["id"] == b["id"]
            assert all(torch.equal(a["inputs"][m], b["inputs"][m]) for m in a["inputs"])


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_covers_every_video_once_across_ranks(shards: Path, workers: int) -> None:
    manifest = read_manifest(shards)
    for split in ("train", "val", "test"):
        expected = sorted(i for s in manifest["shards"] if s["split"] == split for i in s["ids"])
        ids = []
        for rank in range(2):
            data = open_shards(config(shards, "mv", workers=workers), rank=rank, world_size=2)
            ids += [i for b in data.eval_batches(split) for i in b["id"]]
        assert sorted(ids) == expected


def test_training_batches_depend_only_on_seed_epoch_and_rank(shards: Path) -> None:
    data = open_shards(config(shards, "residual"), rank=0, world_size=1)
    assert data.steps_per_epoch == max(1, read_manifest(shards)["splits"]["train"]["samples"] // 2)

    def take(d, epoch: int, n: int = 4) -> list[torch.Tensor]:
        it = iter(d.train_batches(epoch))
        return [next(it)["input"] for _ in range(n)]

    again = open_shards(config(shards, "residual"), rank=0, world_size=1)
    assert all(torch.equal(a, b) for a, b in zip(take(data, 3), take(again, 3)))
    assert not all(torch.equal(a, b) for a, b in zip(take(data, 3), take(data, 4)))
    other_rank = open_shards(config(shards, "residual"), rank=1, world_size=2)
    assert not torch.equal(take(data, 3, 1)[0][:1], take(other_rank, 3, 1)[0][:1])
    batch = next(iter(data.train_batches(0)))
    assert batch["input"].shape == (2, 3, 3, SIZE, SIZE) and batch["label"].dtype == torch.int64


def _rewrite_member(tar_path: Path, out: Path, damage) -> str:
    """Copies a shard, passing each member through `damage(name, data)`; returns the
    name of the first member whose bytes it changed."""
    changed = []
    with tarfile.open(tar_path) as src, tarfile.open(out, "w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            new = damage(info.name, data)
            if new != data and not changed:
                changed.append(info.name)
            info.size = len(new)
            dst.addfile(info, io.BytesIO(new))
    return changed[0]


def test_a_header_layout_that_points_elsewhere_is_a_corrupt_member_not_another_array(shards: Path,
                                                                                    tmp_path: Path) -> None:
    """Index reads jump by the header's layout; a wrong offset gives bytes whose CRC-32
    does not match, so the member is reported, never decoded as something else."""
    manifest = read_manifest(shards)
    shard = next(s for s in manifest["shards"] if s["split"] == "val")
    victim = shard["ids"][0]

    def shift(name: str, data: bytes) -> bytes:
        if name != f"{victim}.json":
            return data
        header = json.loads(data)
        residual = next(i for i, f in enumerate(schema.Header.from_json(data).fields()) if ".res." in f)
        header["layout"][residual][0] += 512  # the layout lists (offset, size) in fields() order
        return json.dumps(header).encode()

    _rewrite_member(shards / shard["name"], tmp_path / "shifted.tar", shift)
    problems, decoded = [], 0
    for key, sample in shard_samples(tmp_path / "shifted.tar"):
        header = sample_header(sample)
        assert header.layout and sorted(sample) == sorted([schema.HEADER_FIELD, *header.fields()])
        for field in header.fields():
            try:
                header.decode(field, sample[field])
                decoded += 1
            except ValueError as e:
                problems.append((key, str(e)))
    assert len(problems) == 1 and problems[0][0] == victim and "is corrupt (CRC-32" in problems[0][1]
    assert decoded == sum(len(sample_header(s).fields()) for _, s in shard_samples(shards / shard["name"])) - 1


def test_headers_without_a_layout_are_read_header_by_header(shards: Path, tmp_path: Path) -> None:
    """Versions 1 and 2 list no layout: index reads then parse every tar header."""
    shard = next(s for s in read_manifest(shards)["shards"] if s["split"] == "train")

    def strip(name: str, data: bytes) -> bytes:
        if not name.endswith(".json"):
            return data
        header = json.loads(data)
        del header["layout"], header["span"]
        return json.dumps(header).encode()

    _rewrite_member(shards / shard["name"], tmp_path / "stripped.tar", strip)
    for (key, with_layout), (same_key, without) in zip(shard_samples(shards / shard["name"]),
                                                        shard_samples(tmp_path / "stripped.tar"), strict=True):
        assert key == same_key and not sample_header(without).layout
        fields = sample_header(with_layout).fields()
        assert sorted(without) == sorted(with_layout) and all(without[f] == with_layout[f] for f in fields)


@pytest.mark.parametrize("read", ["index", "stream"])
def test_a_corrupt_member_is_reported_and_the_video_skipped(shards: Path, tmp_path: Path, capfd, read: str) -> None:
    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    manifest = read_manifest(broken)
    shard = next(s for s in manifest["shards"] if s["split"] == "val" and s["samples"] == 2)
    victim = shard["ids"][0]
    name = _rewrite_member(shards / shard["name"], broken / shard["name"],
                           lambda n, d: b"\x00" * len(d) if n.startswith(victim + ".") and ".res." in n else d)
    data = open_shards(config(broken, "residual", read=read), rank=0, world_size=1)
    batches = list(data.eval_batches("val"))
    ids = [i for b in batches for i in b["id"]]
    assert victim not in ids and set(ids) == {i for s in manifest["shards"] if s["split"] == "val" for i in s["ids"]} - {victim}
    assert capfd.readouterr().err == ""   # reported by whoever takes the batch, once
    assert sum(report_skipped(b) for b in batches) == 1
    err = capfd.readouterr().err
    assert shard["name"] in err and victim in err and name.split(".", 1)[1].split(".")[0] in err


@pytest.mark.parametrize("read", ["index", "stream"])
def test_a_truncated_shard_keeps_what_it_holds_and_reports_the_rest(shards: Path, tmp_path: Path, capfd,
                                                                   read: str) -> None:
    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    manifest = read_manifest(broken)
    shard = next(s for s in manifest["shards"] if s["split"] == "train" and s["samples"] == 2)
    path = broken / shard["name"]
    with tarfile.open(path) as tar:
        second = next(m for m in tar.getmembers() if m.name.startswith(shard["ids"][1] + "."))
    path.write_bytes(path.read_bytes()[:second.offset_data + 100])  # cut inside the second video
    data = open_shards(config(broken, "mv", read=read), rank=0, world_size=1)
    batches = list(data.eval_batches("train"))
    ids = [i for b in batches for i in b["id"]]
    assert shard["ids"][0] in ids and shard["ids"][1] not in ids
    assert sum(report_skipped(b) for b in batches) >= 1
    assert shard["name"] in capfd.readouterr().err


def test_modalities_together_share_frames_and_crops(shards: Path) -> None:
    scales = "[1.0,0.875,0.75]"  # one crop-scale set, so a modality alone draws the same crops
    together = open_shards(config(shards, "iframe", crop_scales=scales), rank=0, world_size=1,
                           modalities=("mv", "residual"))
    batch = next(iter(together.train_batches(2)))
    assert set(batch["inputs"]) == {"iframe", "mv", "residual"} and batch["input"] is batch["inputs"]["iframe"]
    for modality in ("mv", "residual"):
        alone = next(iter(open_shards(config(shards, modality, crop_scales=scales), rank=0,
                                      world_size=1).train_batches(2)))
        # Drawn from the same random stream, so the same videos, frames, crop and flip.
        assert alone["id"] == batch["id"] and torch.equal(alone["input"], batch["inputs"][modality])


def test_the_trainer_runs_without_ffmpeg_or_ray(shards: Path, tmp_path: Path) -> None:
    """A GPU node has neither: the whole trainer, data reading included, must not import
    the compiled extension, Ray or PyAV."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = ("cvpipe._native", "ray", "av")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED or name in BLOCKED:
                    raise ImportError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from trainer.cli import main
        main(["fit", "--config", "tiny_synth", "--set", "data.root={shards}", "--set", "model.modality=mv",
              "--set", "run.dir={tmp_path}/{{modality}}", "--set", "optim.epochs=1", "--set", "optim.batch_size=2",
              "--set", "data.workers=0", "--set", "data.input_size=32", "--set", "model.width=8",
              "--set", "run.progress=false"])
        print("cvpipe modules:", sorted(m for m in sys.modules if m.startswith("cvpipe")))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cvpipe modules: ['cvpipe', 'cvpipe.datasets', 'cvpipe.datasets.manifest', 'cvpipe.shards', 'cvpipe.shards.codec', 'cvpipe.shards.listing', 'cvpipe.shards.schema']" in done.stdout
    assert (tmp_path / "mv" / "best.pt").exists()


def test_one_flipped_bit_per_member_is_caught_counted_and_printed_once(shards: Path, tmp_path: Path, capfd) -> None:
    """A bit flipped in every residual member of the first video of two of the three
    training shards and of the validation shard: each is a corrupt member (CRC-32), the
    video is skipped, and the epochs' train_skipped / val_skipped count exactly the skip
    lines printed."""
    broken = tmp_path / "shards"
    shutil.copytree(shards, broken)
    manifest = read_manifest(broken)
    victims = []
    for shard in [s for s in manifest["shards"] if s["split"] == "train"][1:] + \
            [s for s in manifest["shards"] if s["split"] == "val"]:
        victims.append(shard["ids"][0])

        def flip_a_bit(name: str, data: bytes, victim=shard["ids"][0]) -> bytes:
            if not (name.startswith(victim + ".") and ".res." in name):
                return data
            return data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x10]) + data[len(data) // 2 + 1:]

        _rewrite_member(shards / shard["name"], broken / shard["name"], flip_a_bit)
    listing = json.loads((broken / "manifest.json").read_text())   # the tars changed: so do their sizes
    for shard in listing["shards"]:
        shard["bytes"] = (broken / shard["name"]).stat().st_size
    (broken / "manifest.json").write_text(json.dumps(listing))
    cfg = load_config("tiny_synth", [f"data.root={broken}", "model.modality=residual", f"data.input_size={SIZE}",
                                     "data.workers=0", "optim.batch_size=2", "model.width=8", "optim.epochs=3",
                                     "optim.lr_steps=[]", f"run.dir={tmp_path / 'run'}", "run.progress=false"])
    capfd.readouterr()
    fit(cfg, Dist(0, 1, 0, torch.device("cpu")))
    err = capfd.readouterr().err
    printed = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert all("is corrupt (CRC-32" in line and any(v in line for v in victims) for line in printed), printed
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counted = sum(r["train_skipped"] + r["val_skipped"] for r in records)
    assert counted == len(printed) and all(r["val_skipped"] == 1 for r in records)
    assert sum(r["train_skipped"] for r in records) > 0


def test_bench_data_measures_the_loader_and_the_model(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.analysis.input_rate import bench_data, format_bench
    from trainer.data.shard_reader import loader_workers

    result = bench_data(config(shards, "mv"), [0, 1], batches=2, steps=1, device=torch.device("cpu"))
    assert list(result["loader_videos_s"]) == [0, 1] and min(result["loader_videos_s"].values()) > 0
    assert result["workers_needed"] == pytest.approx(result["model_videos_s"] / result["per_worker_videos_s"])
    assert "workers keep the model busy" in format_bench(result)
    cores = len(os.sched_getaffinity(0))
    assert loader_workers(-1) == cores and loader_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # torchrun's local ranks share the cores
    assert loader_workers(-1) == 1
