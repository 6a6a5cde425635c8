"""The data doctor, measured on a real dataset with planted faults: Fashion-MNIST written out as an image
folder (train/ 60,000 and test/ 10,000 PNGs), then

- 2% of the training labels flipped (the file written into another class's folder),
- 100 exact copies (same class, new name), 100 near copies (re-encoded as JPEG, quality 90),
- 100 test images copied into train/ (leaks), 50 training images copied under another class.

    python -m bench.doctor          # about 30 minutes here: writing the folder, then `imgclf doctor`

Prints, per kind of finding, what was planted, what the doctor found of it (recall), and how many of the
groups it reported hold a planted fault (the rest are Fashion-MNIST's own near-identical images: a lower
bound of precision), then the doctor's seconds. `RESULT kind=K recall=R planted_share=S` lines close it.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.run import DATA, SHARED, machine

FLIP_SHARE = 0.02
COPIES = 100
CROSS = 50


def _write(images: torch.Tensor, labels: torch.Tensor, classes: list[str], folder: Path, prefix: str) -> list[Path]:
    paths = []
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        path = folder / classes[label] / f"{prefix}{i:05d}.png"
        Image.fromarray(image[0].numpy(), "L").save(path)
        paths.append(path)
    return paths


def planted_folder(root: Path, seed: int = 0) -> dict[str, list]:
    """Write the folder and plant the faults; returns what was planted where."""
    from imgclf.config import DataConfig
    from imgclf.data import load_data

    data = load_data(DataConfig(data="fashion-mnist", data_dir=str(SHARED), cache=False))
    classes = [c.replace("/", "-") for c in data.classes]
    train_images = torch.cat([data.train.images, data.val.images])
    train_labels = torch.cat([data.train.labels, data.val.labels])
    rng = np.random.default_rng(seed)
    flipped_index = rng.choice(len(train_labels), int(FLIP_SHARE * len(train_labels)), replace=False)
    given = train_labels.clone()
    given[flipped_index] = (given[flipped_index] + torch.from_numpy(rng.integers(1, 10, len(flipped_index)))) % 10
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    train_paths = _write(train_images, given, classes, root / "train", "")
    test_paths = _write(data.test.images, data.test.labels, classes, root / "test", "t")
    clean = np.setdiff1d(np.arange(len(train_paths)), flipped_index)
    picks = rng.choice(clean, 2 * COPIES + CROSS, replace=False)
    planted: dict[str, list] = {
        "flipped": [train_paths[i] for i in flipped_index],
        "exact": [],
        "near": [],
        "leak": [],
        "cross": [],
    }
    for i in picks[:COPIES]:
        copy = train_paths[i].with_name(f"copy_{train_paths[i].name}")
        shutil.copy(train_paths[i], copy)
        planted["exact"].append((train_paths[i], copy))
    for i in picks[COPIES : 2 * COPIES]:
        near = train_paths[i].with_name(f"near_{train_paths[i].stem}.jpg")
        Image.open(train_paths[i]).save(near, quality=90)
        planted["near"].append((train_paths[i], near))
    for i in picks[2 * COPIES :]:
        other = classes[(int(given[i]) + 1 + int(rng.integers(9))) % 10]
        copy = root / "train" / other / f"cross_{train_paths[i].name}"
        shutil.copy(train_paths[i], copy)
        planted["cross"].append((train_paths[i], copy))
    for i in rng.choice(len(test_paths), COPIES, replace=False):
        leak = root / "train" / test_paths[i].parent.name / f"leak_{test_paths[i].name}"
        shutil.copy(test_paths[i], leak)
        planted["leak"].append((test_paths[i], leak))
    return planted


def _pairs_found(pairs: list, groups: list[dict]) -> int:
    member = {}
    for n, g in enumerate(groups):
        for p in g["paths"]:
            member[p] = n
    return sum(
        1
        for a, b in pairs
        if str(a.resolve()) in member and member.get(str(a.resolve())) == member.get(str(b.resolve()))
    )


def _groups_with_planted(pairs: list, groups: list[dict]) -> int:
    planted = {str(p.resolve()) for pair in pairs for p in pair}
    return sum(1 for g in groups if planted & set(g["paths"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="epochs of each fold's quick cnn (default: the doctor's rule)")
    args = parser.parse_args(argv)
    import imgclf

    root = DATA / "fashion-doctor"
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    planted = planted_folder(root / "photos")
    write_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = imgclf.doctor(
        str(root / "photos"), out=str(root / "doctor"), epochs=args.epochs, data_dir=str(root / "cache")
    )
    seconds = time.perf_counter() - start
    found = result.findings
    exact = [g for g in found["duplicates"] if g["kind"] == "exact"]
    near = [g for g in found["duplicates"] if g["kind"] == "near"]
    copies = planted["exact"] + planted["leak"] + planted["cross"]  # every planted exact copy, whatever else it is
    rows = []
    for kind, pairs, found_in, groups, planted_in in (
        ("exact", planted["exact"], exact, exact, copies),
        ("near", planted["near"], found["duplicates"], near, planted["near"]),
        ("leak", planted["leak"], found["leaks"], found["leaks"], planted["leak"]),
        ("cross-class", planted["cross"], found["cross_class"], found["cross_class"], planted["cross"]),
    ):
        hit = _pairs_found(pairs, found_in)  # a near copy counts wherever it is grouped with its original
        own = _groups_with_planted(planted_in, groups)
        rows.append((kind, len(pairs), hit, hit / len(pairs), own, len(groups)))
    flipped = {str(p.resolve()) for p in planted["flipped"]}
    flagged = [r["path"] for r in found["label_issues"]]
    caught = sum(1 for p in flagged if p in flipped)
    ranking = [r["path"] for r in found.get("label_ranking", found["label_issues"])]
    top = sum(1 for p in ranking[: len(flipped)] if p in flipped)
    print(
        f"\nbench.doctor  {datetime.date.today()}  {machine()}  Fashion-MNIST as a 70,000-PNG folder with planted faults"
    )
    model = found.get("label_model", {})
    print(
        f"writing the folder {write_seconds:.0f} s; imgclf doctor {seconds:.0f} s; label check by {model.get('used')}"
    )
    for c in model.get("candidates", []):
        print(f"  {c['model']}: held-out accuracy {c['accuracy']:.4f}, log loss {c['log_loss']:.4f}")
    print(f"  estimated wrong labels: {found.get('label_errors_estimated')} (planted {len(planted['flipped'])})")
    print(f"{'finding':<13}{'planted':>8}{'found':>7}{'recall':>8}{'groups with planted / all groups':>35}")
    for kind, n, hit, recall, own, total in rows:
        print(f"{kind:<13}{n:>8}{hit:>7}{recall:>8.1%}{own:>22} / {total:<10}")
    print(
        f"{'label flips':<13}{len(flipped):>8}{caught:>7}{caught / len(flipped):>8.1%}   flagged {len(flagged)}, "
        f"precision {caught / max(1, len(flagged)):.1%}; flips in the ranking's first {len(flipped)}: {top / len(flipped):.1%}"
    )
    for kind, _, _, recall, own, total in rows:
        print(f"RESULT kind={kind} recall={recall:.3f} planted_share={own / max(1, total):.3f}")
    print(f"RESULT kind=label-flips recall={caught / len(flipped):.3f} precision={caught / max(1, len(flagged)):.3f}")
    print(f"RESULT doctor_seconds={seconds:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
