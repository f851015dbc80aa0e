"""Success means success: a shard folder whose videos all failed, a split with no video, a
folder without shards and a listing whose counts cannot be trusted are errors that name
the folder and what is wrong, for `cvpipe verify` and for every `cvtrain` command that
reads shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvpipe.cli import main as cvpipe_cli
from cvpipe.datasets.manifest import write_manifest
from cvpipe.shards.job import run_job
from trainer.cli import main as cvtrain


def _shard(entries, tmp_path: Path, name: str) -> Path:
    manifest = tmp_path / f"{name}.jsonl"
    write_manifest(entries, manifest)
    out = tmp_path / name
    run_job(manifest, out, shard_size=2, progress=False)
    return out


@pytest.fixture(scope="module")
def all_failed(ray_cluster, shard_dataset, tmp_path_factory) -> Path:
    """The shard job's output for the dataset's three bad videos alone."""
    bad = [e for e in shard_dataset.entries if e.id in shard_dataset.bad]
    return _shard(bad, tmp_path_factory.mktemp("all_failed"), "shards")


@pytest.fixture(scope="module")
def no_val(ray_cluster, shard_dataset, tmp_path_factory) -> Path:
    """Good videos of the train and test splits, none of val."""
    kept = [e for e in shard_dataset.entries if e.id in shard_dataset.good and e.split != "val"]
    return _shard(kept, tmp_path_factory.mktemp("no_val"), "shards")


def test_verify_fails_when_no_shard_holds_a_sample_and_lists_the_failed(all_failed, shard_dataset, capsys):
    assert cvpipe_cli(["verify", str(all_failed)]) == 1
    printed = capsys.readouterr().out
    assert "problem: no shard holds a sample: none of the 3 videos could be stored" in printed
    assert "0 shards, 0 samples stored, 3 failed videos" in printed
    for bad in shard_dataset.bad:
        assert f"failed: {bad} (" in printed


@pytest.fixture(scope="module")
def mixed(ray_cluster, shard_dataset, tmp_path_factory) -> Path:
    """The whole dataset: eight stored videos, three failed."""
    return _shard(shard_dataset.entries, tmp_path_factory.mktemp("mixed"), "shards")


def test_verify_lists_failed_videos_beside_stored_ones(mixed, shard_dataset, capsys):
    assert cvpipe_cli(["verify", str(mixed)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(shard_dataset.good)} samples stored, {len(shard_dataset.bad)} failed videos" in printed
    assert sorted(line.split()[1] for line in printed.splitlines() if line.lstrip().startswith("failed:")) == \
        sorted(shard_dataset.bad)


def _cvtrain_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        cvtrain(args)
    assert raised.value.code == 2
    return capsys.readouterr().err


def _fit(root: Path, run: Path) -> list[str]:
    return ["fit", "--config", "tiny_synth", "--set", f"data.root={root}", "--set", f"run.dir={run}",
            "--set", "data.workers=0", "--set", "data.input_size=56", "--set", "model.width=8",
            "--set", "optim.batch_size=2", "--set", "optim.epochs=1", "--set", "optim.lr_steps=[]",
            "--set", "run.progress=false", "--set", "model.modality=mv"]


def test_training_on_shards_that_hold_no_sample_names_the_folder(all_failed, tmp_path, capsys):
    error = _cvtrain_error(_fit(all_failed, tmp_path / "run"), capsys)
    assert f"cvtrain: error: {all_failed}: the shards hold no sample (3 videos failed" in error, error
    assert not (tmp_path / "run").exists()


def test_training_without_a_validation_split_names_it(no_val, tmp_path, capsys):
    error = _cvtrain_error(_fit(no_val, tmp_path / "run"), capsys)
    assert f"cvtrain: error: {no_val}: the val split holds no video" in error, error


def test_evaluating_shards_without_samples_or_the_split_names_what_is_missing(mixed, all_failed, no_val, tmp_path,
                                                                             capsys):
    run = tmp_path / "mv"
    assert cvtrain(_fit(mixed, run)) == 0
    error = _cvtrain_error(["eval", str(run), "--set", f"data.root={all_failed}"], capsys)
    assert f"cvtrain: error: {all_failed}: the shards hold no sample" in error, error
    error = _cvtrain_error(["eval", str(run), "--split", "val", "--set", f"data.root={no_val}"], capsys)
    assert f"cvtrain: error: {no_val}: the val split holds no video" in error, error


def test_ic_training_without_shards_names_what_is_missing(tmp_path, capsys):
    empty = tmp_path / "not_sharded"
    empty.mkdir()
    ic = ["ic", "--config", "tiny_synth_ic_ce", "--set", f"data.root={empty}", "--set", f"run.dir={tmp_path / 'ic'}",
          "--set", f"ic.backbones={tmp_path}/{{modality}}.pt"]
    error = _cvtrain_error(ic, capsys)
    assert f"no shards at '{empty}'" in error and "manifest.json is missing" in error, error


def test_training_refuses_a_listing_whose_counts_disagree_with_its_shards(mixed, tmp_path, capsys):
    tampered = Path(shutil.copytree(mixed, tmp_path / "tampered"))
    listing = json.loads((tampered / "manifest.json").read_text())
    listing["splits"]["train"]["samples"] = 10**7   # an epoch of 10^7 videos
    (tampered / "manifest.json").write_text(json.dumps(listing))
    error = _cvtrain_error(_fit(tampered, tmp_path / "run"), capsys)
    assert f"{tampered / 'manifest.json'}: its counts disagree with its own shard list" in error, error
    assert "splits.train.samples is 10000000, its shards add up to 4" in error
    (tampered / "manifest.json").write_text("{not json")
    error = _cvtrain_error(_fit(tampered, tmp_path / "run"), capsys)
    assert f"cvtrain: error: {tampered / 'manifest.json'}: not valid JSON" in error, error
