import gzip
import io
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSES, synthetic_image, write_class_folder
from imgclf import TrainConfig
from imgclf.config import DataConfig, DecodeSpec
from imgclf.data import (
    BatchIterator,
    Split,
    augment_batch,
    channel_stats,
    decode_images,
    list_datasets,
    load_data,
    stratified_split,
)
from imgclf.errors import DataError


def load(**settings):
    return load_data(TrainConfig(**settings))


# ------------------------------------------------------------------ folders and image modes


def test_folder_classes_splits_and_sizes(class_folder):
    data = load(data=str(class_folder), image_size=12, seed=3)
    assert data.classes == ["checker", "horizontal", "vertical"]
    assert data.kind == "folder" and data.channels == 3 and data.image_size == 12
    # 72 images: 20% test held out per class, then 10% of the rest for validation
    assert len(data.train) + len(data.val) + len(data.test) == 72
    assert torch.bincount(data.test.labels).tolist() == [5, 5, 5]
    assert torch.bincount(data.val.labels).tolist() == [2, 2, 2]


def test_folder_default_image_size_is_the_images_own(class_folder):
    data = load(data=str(class_folder))
    assert data.image_size == 16 and data.size_note.startswith("image size 16: the images (all 72) are all 16x16")
    assert load(data=str(class_folder), image_size=12).image_size == 12  # a setting wins, and says nothing
    assert load(data=str(class_folder), image_size=12).size_note == ""


def test_folder_of_mixed_sizes_trains_at_the_median_shorter_side_capped(tmp_path):
    rng = np.random.default_rng(0)
    sides = {
        "a": [(40, 30), (20, 24), (50, 50)],
        "b": [(36, 90), (28, 28), (44, 60)],
    }  # shorter sides 20..50, median 36
    for name, sizes in sides.items():
        (tmp_path / "mixed" / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                tmp_path / "mixed" / name / f"{i}.png"
            )
    data = load(data=str(tmp_path / "mixed"), test_split=0.34)
    assert data.image_size == 36 and "median shorter side of the images (all 6) is 36 (from 20 to 50)" in data.size_note
    for name in ("a", "b"):  # photos larger than the cap train at the cap
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
                tmp_path / "mixed" / name / f"{i}.png"
            )
    data = load(data=str(tmp_path / "mixed"), test_split=0.34)
    assert data.image_size == 64 and "all 400x300, capped at 64 by the recipe" in data.size_note
    assert load_data(TrainConfig(data=str(tmp_path / "mixed"), test_split=0.34), size_cap=128).image_size == 128


def test_split_folders_are_used_as_given(tmp_path):
    write_class_folder(tmp_path / "d" / "train", per_class=10)
    write_class_folder(tmp_path / "d" / "test", per_class=4, seed=1)
    write_class_folder(tmp_path / "d" / "val", per_class=3, seed=2)
    data = load(data=str(tmp_path / "d"), image_size=16)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 9, 12)


def test_mixed_modes_are_converted(tmp_path):
    root = tmp_path / "modes"
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(synthetic_image(0, rng, 20))
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rgb.convert("L").save(root / "a" / "gray.png")
    rgb.convert("P").save(root / "a" / "palette.gif")
    rgb.convert("CMYK").save(root / "a" / "cmyk.jpg")
    rgb.save(root / "b" / "rgb.bmp")
    Image.new("RGBA", (30, 10), (0, 0, 0, 0)).save(root / "b" / "transparent.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(root / "b" / "white16.png")
    images, kept, skipped, channels = decode_images(sorted(root.rglob("*.*")), DecodeSpec(8))
    assert skipped == [] and len(kept) == 6 and channels == 3 and images.shape == (6, 3, 8, 8)
    by_name = {p.name: images[i] for i, p in enumerate(sorted(root.rglob("*.*")))}
    assert by_name["transparent.png"].min() == 255  # transparent pixels become white, not black
    assert by_name["white16.png"].min() == 255  # 16-bit full scale maps to 255


def test_all_grayscale_folder_gives_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("x", "y")):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.fromarray(synthetic_image(c, rng)).convert("L").save(tmp_path / name / f"{i}.png")
    assert load(data=str(tmp_path), image_size=16).channels == 1


def test_corrupt_files_are_skipped_and_listed(class_folder):
    (class_folder / "horizontal" / "broken.png").write_bytes(b"\x89PNG not really")
    (class_folder / "horizontal" / "notes.txt").write_text("hello")
    data = load(data=str(class_folder), image_size=16)
    assert sorted(Path(p).name for p, _ in data.skipped) == ["broken.png", "notes.txt"]
    assert len(data.train) + len(data.val) + len(data.test) == 72


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty", "no class sub-folders"),
        ("one", "at least two class sub-folders"),
        ("loose", "found 2 loose images"),
    ],
)
def test_unusable_folders_raise(tmp_path, layout, message):
    root = tmp_path / layout
    root.mkdir()
    if layout == "one":
        write_class_folder(tmp_path / "tmp", per_class=3)
        (tmp_path / "tmp" / "checker").rename(root / "checker")
    if layout == "loose":
        for i in range(2):
            Image.new("RGB", (4, 4)).save(root / f"{i}.png")
    with pytest.raises(DataError, match=message):
        load(data=str(root))


def test_missing_path_and_unknown_name():
    with pytest.raises(DataError, match="no such folder or file"):
        load(data="./does/not/exist")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load(data="imagenet")


# ------------------------------------------------------------------ CSV


def write_csv_dataset(root: Path, header: str = "id,label", with_suffix: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    lines = [header]
    for i in range(30):
        Image.fromarray(synthetic_image(i % 3, rng)).convert("L").save(root / "train" / f"{i}.png")
        lines.append(f"{i}{'.png' if with_suffix else ''},{i % 3}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def test_csv_with_ids_like_the_apparels_tutorial(tmp_path):
    csv_path = write_csv_dataset(tmp_path)
    data = load(data=str(csv_path), images=str(tmp_path / "train"), image_size=16)
    assert data.kind == "csv" and data.classes == ["0", "1", "2"] and data.channels == 1
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_csv_unknown_columns(tmp_path):
    csv_path = write_csv_dataset(tmp_path, header="picture,kind", with_suffix=True)
    with pytest.raises(DataError, match=r"train.csv: unknown columns picture, kind; name the image column 'file'"):
        load(data=str(csv_path), images=str(tmp_path / "train"))


def test_csv_missing_files(tmp_path):
    csv_path = write_csv_dataset(tmp_path, header="file,label", with_suffix=True)
    with open(csv_path, "a") as f:
        f.write("gone.png,1\nalso_gone.png,2\n")
    with pytest.raises(DataError, match=r"2 of 32 files are not in .*gone.png, also_gone.png.*images=FOLDER"):
        load(data=str(csv_path), images=str(tmp_path / "train"))


def test_a_csv_cannot_reach_outside_its_images_folder_unless_told(tmp_path):
    csv_path = write_csv_dataset(tmp_path, header="file,label", with_suffix=True)
    outside = tmp_path / "secret.png"
    Image.new("L", (16, 16)).save(outside)
    lines = csv_path.read_text().splitlines()
    for escape in ("../secret.png", str(outside)):
        csv_path.write_text("\n".join([*lines, f"{escape},1"]) + "\n")
        with pytest.raises(DataError, match=rf"row 32 names '{re.escape(escape)}', outside .?images.*--images-outside"):
            load(data=str(csv_path), images=str(tmp_path / "train"))
        data = load(data=str(csv_path), images=str(tmp_path / "train"), images_outside=True, image_size=16)
        assert len(data.train) + len(data.val) + len(data.test) == 31


def test_a_repeated_csv_row_is_read_once_and_two_labels_for_one_image_are_refused(tmp_path):
    csv_path = write_csv_dataset(tmp_path, header="file,label", with_suffix=True)
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*lines, "3.png,0", "3.png,0"]) + "\n")
    data = load(data=str(csv_path), images=str(tmp_path / "train"), image_size=16)
    assert len(data.train) + len(data.val) + len(data.test) == 30  # each image once: it cannot leak across splits
    assert sum("repeats row 5" in reason for _, reason in data.skipped) == 2
    csv_path.write_text("\n".join([*lines, "3.png,1"]) + "\n")
    with pytest.raises(DataError, match=r"rows 5 and 32 give '3.png' different labels"):
        load(data=str(csv_path), images=str(tmp_path / "train"))


@pytest.mark.parametrize("separator", [",", "|", " "])
def test_several_labels_joined_by_another_separator_than_the_semicolon_are_named(tmp_path, separator):
    csv_path = write_csv_dataset(tmp_path, header="file,labels", with_suffix=True)
    lines = csv_path.read_text().splitlines()
    lines[-1] = f'29.png,"0{separator}1"'  # the other rows give 0 and 1 alone
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"the labels '0\{separator}1' .*look like several joined by '\{separator}'"):
        load(data=str(csv_path), images=str(tmp_path / "train"))


# ------------------------------------------------------------------ built-in sources from local files


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_mnist_layout_read_from_gz_and_raw_files_offline(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)), gz=True)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(50) % 10, gz=True)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)), gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10, gz=False)
    monkeypatch.setattr("torchvision.datasets.MNIST.download", lambda self: pytest.fail("must not download"))
    data = load(data="mnist", data_dir=str(tmp_path))
    assert data.image_size == 28 and data.channels == 1 and len(data.test) == 20
    assert len(data.train) + len(data.val) == 50
    assert data.test.labels.tolist() == (np.arange(20) % 10).tolist()


def test_cifar10_read_straight_from_the_tar_gz(tmp_path):
    rng = np.random.default_rng(0)

    def member(name, obj):
        blob = pickle.dumps(obj)
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(blob)
        return info, io.BytesIO(blob)

    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for i in range(1, 6):
            tar.addfile(
                *member(
                    f"data_batch_{i}",
                    {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))},
                )
            )
        tar.addfile(
            *member("test_batch", {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))})
        )
        tar.addfile(*member("batches.meta", {"label_names": [f"c{i}" for i in range(10)]}))
    data = load(data="cifar10", data_dir=str(tmp_path), val_split=0.2)
    assert data.classes == [f"c{i}" for i in range(10)] and data.channels == 3 and data.image_size == 32
    assert len(data.test) == 10 and len(data.train) + len(data.val) == 50


def test_absent_dataset_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST.download", offline)
    with pytest.raises(DataError, match=r"FashionMNIST is not in .*FashionMNIST/raw.*put train-images-idx3-ubyte.gz"):
        load(data="fashion-mnist", data_dir=str(tmp_path))


def test_shipped_digits_dataset():
    data = load(data="digits")
    assert data.classes == [str(i) for i in range(10)]
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.images.max() == 255 and data.image_size == 8


@pytest.mark.shared_data
def test_real_mnist_files(shared_data):
    data = load(data="mnist", data_dir=str(shared_data))
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
    assert torch.bincount(data.test.labels).tolist()[:3] == [980, 1135, 1032]  # the canonical test set
    assert abs(data.mean[0] - 0.1307) < 0.002 and abs(data.std[0] - 0.3081) < 0.002


# ------------------------------------------------------------------ splits, statistics, batches


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_split(labels, 0.2, seed=7)
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 100
    assert torch.bincount(labels[held]).tolist() == [10, 6, 4]
    assert torch.equal(held, stratified_split(labels, 0.2, seed=7)[1])
    assert not torch.equal(held, stratified_split(labels, 0.2, seed=8)[1])


def test_channel_stats_match_torch():
    images = torch.randint(0, 256, (37, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk_pixels=750)  # 10 images a chunk
    x = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    assert torch.allclose(
        torch.tensor(std, dtype=torch.float64), x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)
    )


def test_augment_flip_and_shift_move_pixels_exactly():
    x = torch.rand(64, 1, 8, 8)
    flip = torch.arange(64) % 2 == 0
    out = augment_batch(x, "light", flip, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output is the input, flipped where asked, shifted by at most 1 pixel (8/16), borders mirrored
    shifts = set()
    for original, augmented, flipped in zip(x, out, flip):
        candidate = original.flip(2) if flipped else original
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(torch.roll(candidate, (dy, dx), (1, 2))[:, 1:-1, 1:-1], augmented[:, 1:-1, 1:-1])
        ]
        assert matches
        shifts.update(matches)
    assert len(shifts) == 9  # all shifts occur
    assert torch.equal(augment_batch(x, "none", flip), x)


def test_flips_alternate_between_epochs():
    images = torch.zeros(40, 1, 6, 6, dtype=torch.uint8)
    images[..., :2] = 255  # left edge bright: a flipped image is bright on the right
    batches = BatchIterator(
        Split(images, torch.arange(40)), 8, torch.device("cpu"), [0.0], [1.0], shuffle=True, augment="light", hflip=True
    )

    def flipped_by_label(epoch: int) -> dict[int, bool]:
        batches.set_epoch(epoch)
        return {
            int(label): bool(x[0, 2:4, 4:].sum() > x[0, 2:4, :2].sum())
            for xb, yb in batches
            for x, label in zip(xb, yb)
        }

    first, second = flipped_by_label(1), flipped_by_label(2)
    assert 5 < sum(first.values()) < 35
    assert all(first[i] != second[i] for i in range(40))  # each image in both orientations over two epochs


def test_no_flip_for_digits():
    x = torch.zeros(32, 1, 8, 8)
    x[:, :, :, :2] = 1.0  # left edge bright
    out = augment_batch(x, "light", None, generator=torch.Generator().manual_seed(0))
    assert out[:, :, :, 5:].sum() == 0  # never mirrored to the right


def test_batch_iterator_epochs_and_normalisation():
    split = Split(torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8), torch.arange(100))
    mean, std = channel_stats(split.images)
    batches = BatchIterator(split, 32, torch.device("cpu"), mean, std, shuffle=True, seed=1)
    batches.set_epoch(1)
    first = torch.cat([y for _, y in batches])
    assert sorted(first.tolist()) == list(range(100)) and len(batches) == 4
    assert torch.equal(first, torch.cat([y for _, y in batches]))  # same epoch, same order
    batches.set_epoch(2)
    assert not torch.equal(first, torch.cat([y for _, y in batches]))
    x = torch.cat([x for x, _ in batches])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-3


def test_balanced_sampler_evens_out_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = (1.0 / torch.bincount(labels).float())[labels]
    batches = BatchIterator(
        Split(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels),
        1000,
        torch.device("cpu"),
        [0.0],
        [1.0],
        sample_weights=weights,
        seed=0,
    )
    drawn = torch.cat([y for epoch in range(1, 21) for y in (batches.set_epoch(epoch) or [y for _, y in batches])])
    assert 0.45 < drawn.float().mean().item() < 0.55


def test_folder_splits_know_each_image_file(class_folder, tmp_path):
    fresh = load(data=str(class_folder), image_size=16, data_dir=str(tmp_path))
    cached = load(data=str(class_folder), image_size=16, data_dir=str(tmp_path))
    assert cached.from_cache and cached.test.sources == fresh.test.sources
    for split in (fresh.train, fresh.val, fresh.test):
        assert len(split.sources) == len(split)
        assert [Path(s).parent.name for s in split.sources] == [fresh.classes[y] for y in split.labels.tolist()]
    assert len(set(fresh.train.sources + fresh.val.sources + fresh.test.sources)) == 3 * 24


# ---------------------------------------------------------------- the registries of datasets and sources


@pytest.mark.parametrize("name", [spec.name for spec in list_datasets()])  # a new dataset is tested here
def test_every_registered_dataset_says_what_it_is(name):
    from imgclf.data import get_dataset

    spec = get_dataset(name)
    assert spec.name == name and spec.description and callable(spec.load)
    assert spec.train_images is None or spec.train_images > 0


def _path_of_each_kind(tmp_path):
    """A path of every registered kind: a class folder, a CSV of it, and its packed shards."""
    import imgclf

    folder = write_class_folder(tmp_path / "photos", per_class=6)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "file,label\n"
        + "".join(f"photos/{p.parent.name}/{p.name},{p.parent.name}\n" for p in sorted(folder.rglob("*.png")))
    )
    packed = imgclf.pack(str(folder), tmp_path / "shards", verbose=False, data_dir=str(tmp_path / "cache"))
    return {"folder": folder, "csv": csv, "shards": packed.out}


def test_every_registered_source_claims_its_own_paths_and_loads_them(tmp_path):
    from imgclf.data import list_sources
    from imgclf.data.registry import source_for

    paths = _path_of_each_kind(tmp_path)
    assert {s.kind for s in list_sources()} == set(paths)  # a new source adds its kind of path here
    for source in list_sources():
        path = paths[source.kind]
        assert source_for(path) is source and source.usage and source.description
        assert [s.kind for s in list_sources() if s.matches(path)] == [source.kind]  # sources do not overlap
        data = load_data(DataConfig(data=str(path), data_dir=str(tmp_path / "cache")))
        assert data.kind == source.kind and data.classes == sorted(CLASSES) and len(data.train) > 0
