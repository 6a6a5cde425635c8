"""Several labels per image, measured on real images: Fashion-MNIST garments placed on a 2 x 2 canvas.

    python -m bench.multilabel                    # 6,000 training canvases, 2,000 held out, both losses
    python -m bench.multilabel --train 3000 --epochs 4

Each 56 x 56 canvas holds 1 to 4 Fashion-MNIST items (each of the four cells filled with probability 0.45, at
least one), so an image carries 1 to 4 of the 10 classes (1.76 on average); the labels are the classes present. Training
canvases use Fashion-MNIST's training items and are listed in a CSV with a ``labels`` column (``;``-separated);
the held-out test canvases use its test items and are listed in a second CSV in the other layout (one 0/1 column
per class), so both readers are exercised. imgclf trains its ``cnn`` recipe (the folder default for several labels:
what `imgclf train --data train.csv` runs), with binary cross-entropy and with focal loss; each run's per-class thresholds are
chosen on its own validation split. Reported on the held-out canvases: macro and micro F1, mAP, subset accuracy and
Hamming loss at the run's thresholds and at a flat 0.5 (the usual default, the baseline), the per-class threshold
table, and predict/export parity (ONNX Runtime against PyTorch on every held-out canvas).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.run import DATA, SHARED, machine

CELLS, FILL, SIDE = 4, 0.45, 28


def _canvases(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 56 x 56 canvases of up to four items each, and their 0/1 label rows."""
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(n, 1, 2 * SIDE, 2 * SIDE, dtype=torch.uint8)
    targets = torch.zeros(n, 10)
    for i in range(n):
        filled = torch.rand(CELLS, generator=generator) < FILL
        if not filled.any():
            filled[torch.randint(CELLS, (1,), generator=generator)] = True
        for cell in torch.nonzero(filled).flatten().tolist():
            item = int(torch.randint(len(images), (1,), generator=generator))
            row, col = divmod(cell, 2)
            canvas[i, :, row * SIDE : (row + 1) * SIDE, col * SIDE : (col + 1) * SIDE] = images[item]
            targets[i, labels[item]] = 1
    return canvas, targets


def build(train: int, test: int) -> tuple[Path, Path, list[str]]:
    """The training CSV (labels column) and the held-out CSV (one column per class), written once."""
    from PIL import Image

    from imgclf.config import DataConfig
    from imgclf.data.builtin import fashion_mnist

    raw = fashion_mnist(DataConfig(data="fashion-mnist", data_dir=str(SHARED)))
    classes = [c.replace("/", "-") for c in raw.classes]
    root = DATA / f"fashion-multilabel-{train}-{test}"
    train_csv, test_csv = root / "train.csv", root / "heldout.csv"
    if train_csv.is_file() and test_csv.is_file():
        return train_csv, test_csv, sorted(classes)
    assert raw.test is not None
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, part, n, seed in (("train", raw.train, train, 0), ("heldout", raw.test, test, 1)):
        canvas, targets = _canvases(part.images, part.labels, n, seed)
        rows = []
        for i in range(n):
            file = f"images/{name}-{i:05d}.png"
            Image.fromarray(canvas[i, 0].numpy()).save(root / file)
            rows.append((file, targets[i]))
        with open(root / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            if name == "train":
                writer.writerow(["file", "labels"])
                writer.writerows([file, ";".join(c for c, on in zip(classes, t.tolist()) if on)] for file, t in rows)
            else:  # the columns in the order imgclf sorts a labels column's names, so the two CSVs' classes match
                order = sorted(range(len(classes)), key=lambda c: classes[c])
                writer.writerow(["file", *(classes[c] for c in order)])
                writer.writerows([file, *(int(t[c]) for c in order)] for file, t in rows)
    return train_csv, test_csv, sorted(classes)


def measure(run: Path, test_csv: Path) -> dict[str, Any]:
    """Held-out metrics at the run's thresholds and at 0.5, and the ONNX export's parity on every canvas."""
    import imgclf
    from imgclf.config import TrainConfig
    from imgclf.data import load_data
    from imgclf.metrics import multilabel_metrics

    classifier = imgclf.load(run, device="cpu")
    data = load_data(TrainConfig(data=str(test_csv), image_size=classifier.image_size, test_split=0.5).data_config)
    images = torch.cat([data.train.images, data.val.images, data.test.images])
    targets = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    assert data.classes == classifier.classes, (data.classes, classifier.classes)
    probs = classifier.predict_proba(images)
    tuned = multilabel_metrics(probs, targets, classifier.classes, classifier.thresholds)
    flat = multilabel_metrics(probs, targets, classifier.classes, [0.5] * len(classifier.classes))
    imgclf.export(run, format="onnx")
    from imgclf.export import exported_backend

    onnx = exported_backend(run, "onnx", lambda _: None)
    exported = torch.cat([onnx(images[i : i + 256]) for i in range(0, len(images), 256)])
    cut = torch.tensor(classifier.thresholds)
    same_labels = ((exported >= cut) == (probs >= cut)).all(1).float().mean().item()
    return {
        "tuned": tuned,
        "flat": flat,
        "parity_max_difference": (exported - probs).abs().max().item(),
        "parity_same_labels": same_labels,
        "images": len(images),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=6000, help="training canvases")
    parser.add_argument("--test", type=int, default=2000, help="held-out canvases")
    parser.add_argument("--epochs", type=int, help="instead of the recipe's epochs (a quicker check)")
    parser.add_argument("--losses", nargs="+", default=["bce", "focal"], choices=["bce", "focal"])
    args = parser.parse_args(argv)
    import imgclf

    train_csv, test_csv, classes = build(args.train, args.test)
    print(f"# {datetime.date.today()}, {machine()}; {args.train} training canvases ({train_csv}), {args.test} held out")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for loss in args.losses:
            t0 = time.perf_counter()
            result = imgclf.train(
                data=str(train_csv),
                loss=loss,
                seed=0,
                verbose=False,
                out=f"{out}/{loss}",
                **({"epochs": args.epochs} if args.epochs else {}),
            )
            seconds = time.perf_counter() - t0
            m = measure(Path(f"{out}/{loss}"), test_csv)
            rows.append((loss, result, seconds, m))
            for name, r in (("tuned", m["tuned"]), ("flat", m["flat"])):
                print(
                    f"RESULT loss={loss} thresholds={name} macro_f1={r['macro_f1']:.4f} micro_f1={r['micro_f1']:.4f} "
                    f"mAP={r['mAP']:.4f} subset={r['subset_accuracy']:.4f} hamming={r['hamming_loss']:.4f} "
                    f"train_s={result.metrics['train_seconds']:.1f} total_s={seconds:.1f} "
                    f"img_s={result.metrics['images_per_second']:.0f}",
                    flush=True,
                )
            print(
                f"RESULT loss={loss} parity_max_difference={m['parity_max_difference']:.2e} "
                f"parity_same_labels={m['parity_same_labels']:.4f} images={m['images']}",
                flush=True,
            )
    print(
        "\n| loss | thresholds | macro F1 | micro F1 | mAP | subset accuracy | Hamming loss | training s | images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for loss, result, _, m in rows:
        for name, label in (("flat", "0.5 for all (baseline)"), ("tuned", "per class, on validation")):
            r = m[name]
            print(
                f"| {loss} | {label} | {r['macro_f1']:.4f} | {r['micro_f1']:.4f} | {r['mAP']:.4f} | "
                f"{r['subset_accuracy']:.4f} | {r['hamming_loss']:.4f} | {result.metrics['train_seconds']:.0f} | "
                f"{result.metrics['images_per_second']:.0f} |"
            )
    loss, _, _, m = rows[0]
    print(f"\nper-class thresholds ({loss}): chosen on the run's validation split; F1 on the held-out canvases")
    print("| class | threshold | F1 at it | F1 at 0.5 | average precision | held-out images with it |")
    print("|---|---|---|---|---|---|")
    for name in classes:
        t, f = m["tuned"]["per_class"][name], m["flat"]["per_class"][name]
        print(
            f"| {name} | {t['threshold']:.2f} | {t['f1']:.4f} | {f['f1']:.4f} | {t['average_precision']:.4f} | "
            f"{t['support']} |"
        )
    print(
        f"\npredict/export parity: ONNX Runtime vs PyTorch on {m['images']} held-out canvases: largest probability "
        f"difference {m['parity_max_difference']:.1e}, same labels on {m['parity_same_labels']:.2%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
