"""`imgclf pack` and training streamed from WebDataset shards."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import pytest
import torch

import imgclf
from conftest import write_class_folder
from imgclf import TrainConfig
from imgclf.cli import main
from imgclf.data import load_data
from imgclf.data.shards import ShardBatches
from imgclf.errors import DataError


def _pairs(split) -> Counter:
    """A split's (label, pixels) pairs, whatever their order."""
    return Counter((int(y), bytes(img.contiguous().numpy().tobytes())) for img, y in zip(split.images, split.labels))


@pytest.fixture
def packed(tmp_path):
    folder = write_class_folder(tmp_path / "stripes", per_class=30)
    result = imgclf.pack(str(folder), tmp_path / "shards", shard_size=16, image_size=12, verbose=False)
    return folder, result


def test_pack_holds_the_splits_and_pixels_training_on_the_folder_uses(packed, tmp_path):
    folder, result = packed
    cfg = TrainConfig(data=str(folder), image_size=12, data_dir=str(tmp_path / "data"))
    from_folder = load_data(cfg)
    from_shards = load_data(cfg.replace(data=str(result.out)))
    assert from_shards.kind == "shards" and from_shards.classes == from_folder.classes
    assert result.counts == {
        "train": len(from_folder.train),
        "val": len(from_folder.val),
        "test": len(from_folder.test),
    }
    for split in ("val", "test"):
        assert _pairs(getattr(from_shards, split)) == _pairs(getattr(from_folder, split))
    assert sorted(from_shards.train.labels.tolist()) == sorted(from_folder.train.labels.tolist())
    assert from_shards.mean == pytest.approx(from_folder.mean) and from_shards.std == pytest.approx(from_folder.std)
    # WebDataset's layout: each sample a .png and a .cls under one key, 16 a shard, classes mixed in each
    with tarfile.open(result.out / result.shards["train"][0]) as tar:
        names = tar.getnames()
        labels = {int(tar.extractfile(n).read()) for n in names if n.endswith(".cls")}
    assert len(names) == 32 and {n.rsplit(".", 1)[1] for n in names} == {"png", "cls"} and len(labels) > 1
    index = json.loads((result.out / "index.json").read_text())
    assert index["image_size"] == 12 and index["counts"] == result.counts


def test_streamed_batches_deal_each_process_its_own_shards(packed):
    _, result = packed
    data = load_data(TrainConfig(data=str(result.out), data_dir=str(result.out.parent / "data")))
    common = dict(augment="none", seed=3, workers=1)
    ranks = [
        ShardBatches(data.train, 4, torch.device("cpu"), [0.0], [1.0], rank=r, world_size=2, **common) for r in (0, 1)
    ]
    for epoch in (1, 2):
        dealt = []
        for batches in ranks:
            batches.set_epoch(epoch)
            dealt.append(batches._my_shards())
            steps = list(batches)
            assert len(steps) == len(batches) == len(data.train) // 8  # every process takes the same steps
            assert all(x.shape == (4, 3, 12, 12) for x, _ in steps)
        assert not set(dealt[0]) & set(dealt[1]) and sorted(dealt[0] + dealt[1]) == sorted(data.train.shards)
    with pytest.raises(DataError, match="fewer|for 9 processes"):
        ShardBatches(data.train, 4, torch.device("cpu"), [0.0], [1.0], world_size=9)


def test_training_from_shards_learns_and_refuses_another_size(packed, tmp_path, capsys):
    _, result = packed
    run = imgclf.train(
        data=str(result.out),
        epochs=15,
        model="cnn2",
        data_dir=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        verbose=False,
    )
    assert run.accuracy >= 0.9
    with pytest.raises(DataError, match="packed at 12 px, not 16"):
        load_data(TrainConfig(data=str(result.out), image_size=16))
    assert main(["pack", str(result.out), "--out", str(result.out)]) == 2
    assert "already exists" in capsys.readouterr().err
