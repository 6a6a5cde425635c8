"""Where a near duplicate ends: the doctor's embedding threshold, measured on copies whose answer is known.

Two real test sets, written as folders: MNIST (10,000 grey digits, where thin strokes fooled the old pixel
check into grouping hundreds of different 1s) and CIFAR-10 (10,000 colour JPEGs). Into each, 300 copies are
planted, a third each re-encoded as JPEG at quality 90, at quality 60, and rescaled by 7/8 and back. Every
candidate pair the doctor's hashes and pixel check propose is then either a planted copy (the answer: same
image) or a pair of different images (the dataset's own near-identical pictures are counted as different,
so the precision printed is a lower bound). Per rule (imgclf 0.3's brightness difference, lite0's embedding
distance, imgclf 0.4's brightness difference and correlation): planted copies kept (recall) and candidate
pairs kept that are planted (precision).

    python -m bench.near_duplicates      # about 5 minutes here (lite0 embeddings of 20,600 images)
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.run import DATA, SHARED, machine

COPIES = 300
THRESHOLDS = (0.01, 0.03, 0.1)
LOOSE_PIXELS = 40.0


def _mnist(root: Path) -> list[Path]:
    raw = SHARED / "MNIST" / "raw"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = root / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _cifar(root: Path) -> list[Path]:
    source = DATA / "cifar10" / "test"
    if not source.is_dir():
        import tarfile

        with tarfile.open(SHARED / "cifar10-jpg.tar.gz") as tar:
            tar.extractall(DATA, filter="data")
    shutil.copytree(source, root)
    return sorted(root.rglob("*.jpg"))


def _copy(path: Path, kind: int) -> Path:
    image = Image.open(path)
    image.load()
    if kind == 2:  # rescaled by 7/8 and back
        w, h = image.size
        image = image.resize((w * 7 // 8, h * 7 // 8), Image.BILINEAR).resize((w, h), Image.BILINEAR)
        out = path.with_name(f"copy_{path.stem}.png")
        image.save(out)
        return out
    out = path.with_name(f"copy_{path.stem}.jpg")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=(90, 60)[kind])
    out.write_bytes(buffer.getvalue())
    return out


def measure(name: str, root: Path, paths: list[Path], seed: int = 0) -> list[tuple]:
    from imgclf.config import DataConfig
    from imgclf.doctor import checks
    from imgclf.doctor.inventory import take_inventory
    from imgclf.doctor.models import embeddings
    from imgclf.runtime import resolve_device

    rng = np.random.default_rng(seed)
    planted = {}
    for n, i in enumerate(rng.choice(len(paths), COPIES, replace=False)):
        planted[str(_copy(paths[i], n % 3).resolve())] = str(paths[i].resolve())
    t0 = time.perf_counter()
    inventory = take_inventory(DataConfig(data=str(root), data_dir=str(root.parent / "cache")))
    hashes = checks.perceptual_hashes(inventory.images)
    rule = (checks.NEAR_PIXELS, checks.NEAR_CORRELATION)
    checks.NEAR_PIXELS, checks.NEAR_CORRELATION = LOOSE_PIXELS, -1.0  # every hash candidate, to score each rule
    try:
        pairs = checks.near_candidates(inventory, hashes)
    finally:
        checks.NEAR_PIXELS, checks.NEAR_CORRELATION = rule
    first, second = (np.array(side) for side in zip(*pairs))
    difference, correlation = (v.numpy() for v in checks.pixel_agreement(inventory.images, first, second))
    features, size = embeddings(inventory, resolve_device("auto"), root.parent / "cache")
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    distance = (1 - (unit[first] * unit[second]).sum(1)).numpy()
    seconds = time.perf_counter() - t0
    ids = inventory.ids
    is_copy = np.array([planted.get(ids[i]) == ids[j] or planted.get(ids[j]) == ids[i] for i, j in pairs])
    print(
        f"\n{name}: {len(inventory):,} images with {COPIES} planted copies; {len(pairs):,} hash candidates "
        f"(within {checks.NEAR_DISTANCE} bits, brightness within {LOOSE_PIXELS:g} levels), {int(is_copy.sum())} "
        f"planted; lite0 at {size} px; {seconds:.0f} s"
    )
    rules = {
        "imgclf 0.3: brightness within 5 levels": difference <= 5,
        **{f"lite0 embeddings within {t} (cosine)": distance <= t for t in THRESHOLDS},
        f"imgclf 0.4: within {rule[0]:g} levels, correlation >= {rule[1]}": (difference <= rule[0])
        & (correlation >= rule[1]),
    }
    print(f"  {'rule':<52}{'copies kept':>13}{'pairs kept':>12}{'precision':>11}")
    rows = []
    for label, kept in rules.items():
        recall = (kept & is_copy).sum() / COPIES
        precision = (kept & is_copy).sum() / max(1, kept.sum())
        print(f"  {label:<52}{recall:>13.1%}{int(kept.sum()):>12}{precision:>11.1%}")
        rows.append((name, label, recall, precision))
    from sklearn.metrics import roc_auc_score

    if is_copy.any() and not is_copy.all():
        print(
            f"  AUROC copies against other candidates: brightness difference "
            f"{roc_auc_score(is_copy, -difference):.3f}, correlation {roc_auc_score(is_copy, correlation):.3f}, "
            f"embedding distance {roc_auc_score(is_copy, -distance):.3f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    root = DATA / "near-duplicates"
    shutil.rmtree(root, ignore_errors=True)
    print(f"bench.near_duplicates  {datetime.date.today()}  {machine()}")
    rows = measure("MNIST test", root / "mnist", _mnist(root / "mnist"))
    rows += measure("CIFAR-10 test (JPEG)", root / "cifar", _cifar(root / "cifar"))
    for name, label, recall, precision in rows:
        print(
            f"RESULT data={name.split()[0]} rule={label.split(':')[0].replace(' ', '_')} recall={recall:.3f} precision={precision:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
