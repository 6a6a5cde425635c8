"""Folders larger than memory: the decode cache as a memory-mapped file, chosen automatically."""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bench.memory import run_with_peak_anon
from conftest import write_class_folder
from imgclf import TrainConfig
from imgclf.config import DataConfig
from imgclf.data import load_data
from imgclf.data.cache import choose_storage
from imgclf.errors import DataError

GB = 2**30


def write_noise_folder(root: Path, per_class: int, classes: int = 4) -> Path:
    """Tiny PNGs (8 x 8 noise with a class colour), cheap to write; decoded at a large size they are large."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            pixels[..., c % 3] = 40 + 60 * c
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def test_memory_mapped_splits_equal_the_in_memory_ones_and_are_views(tmp_path):
    folder = write_noise_folder(tmp_path / "noise", per_class=30)
    cfg = TrainConfig(data=str(folder), image_size=24, data_dir=str(tmp_path / "data"))
    in_memory, mapped = load_data(cfg.replace(storage="memory")), load_data(cfg.replace(storage="mmap"))
    assert mapped.from_cache and "memory-mapped" in mapped.storage_note and "in memory" in in_memory.storage_note
    for name in ("train", "val", "test"):
        a, b = getattr(in_memory, name), getattr(mapped, name)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.sources == b.sources
        assert b.mapped and not a.mapped
    assert in_memory.mean == mapped.mean and in_memory.std == mapped.std
    # the three splits share the one mapped file: slices of it, not copies
    assert mapped.train.images.untyped_storage().data_ptr() == mapped.test.images.untyped_storage().data_ptr()
    (cache,) = (tmp_path / "data" / "cache").glob("*.u8")
    assert cache.stat().st_size == 120 * 3 * 24 * 24
    # uncached and too large for memory: an unlinked temporary file, nothing left behind
    uncached = load_data(cfg.replace(cache=False, storage="mmap", data_dir=str(tmp_path / "scratch")))
    assert torch.equal(uncached.train.images, in_memory.train.images)
    assert list((tmp_path / "scratch").iterdir()) == []


def test_grayscale_folders_keep_one_channel_in_the_file(tmp_path):
    for c in range(2):
        (tmp_path / "gray" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((12, 12), 40 * c + i, np.uint8), "L").save(tmp_path / "gray" / f"c{c}" / f"{i}.png")
    cfg = TrainConfig(data=str(tmp_path / "gray"), data_dir=str(tmp_path / "data"))
    mapped = load_data(cfg.replace(storage="mmap"))
    uncached = load_data(cfg.replace(cache=False))  # decoded in memory, as before the file existed
    assert mapped.channels == uncached.channels == 1
    assert torch.equal(mapped.train.images, uncached.train.images)
    assert {int(img[0, 0, 0]) for img in mapped.train.images} <= {0, 1, 2, 3, 4, 5, 40, 41, 42, 43, 44, 45}
    (cache,) = (tmp_path / "data" / "cache").glob("*.u8")
    assert cache.stat().st_size == 12 * 1 * 12 * 12


def test_auto_storage_follows_the_available_memory(monkeypatch):
    monkeypatch.setattr("imgclf.data.cache.available_memory", lambda: 4 * GB)
    assert choose_storage(1 * GB)[0] == "memory"
    storage, why = choose_storage(3 * GB)
    assert storage == "mmap" and "4.00 GB available" in why
    assert choose_storage(3 * GB, "memory")[0] == "memory"


def test_a_cache_larger_than_the_free_disk_names_pack(tmp_path, monkeypatch):
    folder = write_noise_folder(tmp_path / "noise", per_class=3)
    monkeypatch.setattr("imgclf.data.cache.shutil.disk_usage", lambda _: SimpleNamespace(free=100_000))
    with pytest.raises(DataError, match="more than 80% of the 0 MB free there; pack the folder into shards"):
        load_data(TrainConfig(data=str(folder), image_size=64, data_dir=str(tmp_path / "data")))


# ---------------------------------------------------------------- a folder larger than the memory cap


def _set_data_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _train(folder: Path, tmp_path: Path, out: str, storage: str, limit: int) -> tuple[subprocess.CompletedProcess, int]:
    """`imgclf train` under a data-memory limit; returns the process and its peak anonymous resident memory."""
    config = tmp_path / "big.yaml"  # a small model and batch: the memory measured is the data's
    config.write_text("model: mlp\nmodel_args: {hidden: 16}\nimage_size: 352\nepochs: 1\nbatch_size: 32\n")
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="2")  # arenas and threads reserve memory too
    command = [sys.executable, "-m", "imgclf", "train", "--config", str(config), "--data", str(folder)]
    command += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / out), "--storage", storage]
    done, _, peak = run_with_peak_anon(command, env, lambda: _set_data_limit(limit), timeout=600)
    return done, peak


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_folder_larger_than_the_memory_cap_trains_with_bounded_resident_memory(tmp_path):
    folder = write_noise_folder(tmp_path / "big", per_class=1500)  # 6,000 files, 2.08 GiB decoded at 352 px
    decoded = 6000 * 3 * 352 * 352
    cap = int(1.9 * GB)  # RLIMIT_DATA: the process's private memory, below the decoded folder's size
    assert decoded > cap
    mapped, peak = _train(folder, tmp_path, "mapped", "auto", cap)
    assert mapped.returncode == 0, mapped.stderr[-2000:]
    assert "memory-mapped from the cache file" in mapped.stdout  # auto chose it, and said why
    assert "test accuracy" in mapped.stdout and (tmp_path / "mapped" / "best.pt").is_file()
    assert 0 < peak < cap < decoded
    print(
        f"decoded {decoded / 2**30:.2f} GB under RLIMIT_DATA {cap / 2**30:.2f} GB: peak RssAnon {peak / 2**30:.2f} GB"
    )
    # the same run holding the images in memory cannot: one line naming the fix, no traceback
    in_memory, _ = _train(folder, tmp_path, "in_memory", "memory", cap)
    assert in_memory.returncode == 2
    assert "do not fit" in in_memory.stderr and "--storage mmap" in in_memory.stderr
    assert "Traceback" not in in_memory.stderr


def test_folder_is_decoded_once_and_a_changed_folder_decodes_again(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=12)
    cfg = DataConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
    first = load_data(cfg)
    second = load_data(cfg)
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    # another image size is another cache entry
    assert not load_data(dataclasses.replace(cfg, image_size=8)).from_cache
    # replacing a file (new size and mtime) invalidates the entry, and the stale file is removed
    changed = folder / "checker" / "000.png"
    changed.write_bytes((folder / "vertical" / "000.png").read_bytes())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_data(cfg)
    assert not third.from_cache
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    assert load_data(cfg).from_cache
    # --no-cache decodes and writes nothing
    assert not load_data(dataclasses.replace(cfg, cache=False, data_dir=str(tmp_path / "none"))).from_cache
    assert not (tmp_path / "none").exists()


def test_damaged_cache_file_is_a_miss_not_an_error(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=8)
    cfg = DataConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
    load_data(cfg)
    (cached,) = (tmp_path / "data" / "cache").glob("*.u8")
    cached.write_bytes(b"truncated")
    assert not load_data(cfg).from_cache
    assert load_data(cfg).from_cache
