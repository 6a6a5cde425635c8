"""Your own photos: the folder default (the search over lite0 and the cnn) against today's default and
against the best hand-set flags, on real folders it was not tuned on.

    python -m bench.photos                       # small colour, small grey, imbalanced colour (about 40 minutes)
    python -m bench.photos --tasks full          # the whole CIFAR-10 JPEG folder (about 30 minutes)

Tasks (all from ../shared/data, written once as folders of image files under .data/):
- ``small``: 100 training images per CIFAR-10 class (JPEG, 32 px, colour), 200 test images per class;
- ``small-grey``: 100 per Fashion-MNIST class (PNG, 28 px, grey), 200 test images per class;
- ``imbalanced``: CIFAR-10 thinned to 1:20 (500 down to 25 per class, bench/imbalance.py), balanced test;
- ``full``: the whole CIFAR-10 JPEG folder (50,000 + 10,000).
Methods: ``today`` is imgclf 0.2's folder default (`search=off`, no imbalance treatment: the cnn recipe);
``default`` is what `imgclf train --data FOLDER` does now (search within the default budget, imbalance rule);
``hand-set`` is the best flags a user had before: lite0's ImageNet weights at 96 px, fine-tuned for the same
default budget (`--model lite0 --image-size 96 --budget 600`). "seconds" is the whole call: decoding, search,
training and test. ``hand-set`` runs on ``small`` only, where bench/transfer.py measured
those flags best. Prints a table and ``RESULT`` lines.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.imbalance import _write_folder, cifar10_lt
from bench.run import DATA, SHARED, cifar10_folder, machine
from bench.transfer import task_folder

METHODS: dict[str, dict[str, Any]] = {
    "today": {"search": "off", "class_weights": "none", "monitor": "val_loss"},
    "default": {"search": "auto"},
    "hand-set": {"model": "lite0", "image_size": 96, "budget": 600},
}


def fashion_small() -> Path:
    target = DATA / "fashion-mnist-100-per-class"
    if (target / "test").is_dir():
        return target
    from PIL import Image

    from imgclf.config import DataConfig
    from imgclf.data.builtin import fashion_mnist

    raw = fashion_mnist(DataConfig(data="fashion-mnist", data_dir=str(SHARED)))
    assert raw.test is not None
    splits = {
        split: [(name, list(part.images[part.labels == i][:count])) for i, name in enumerate(raw.classes)]
        for split, part, count in (("train", raw.train, 100), ("test", raw.test, 200))
    }
    return _write_folder(
        target, splits, lambda image, folder, n: Image.fromarray(image[0].numpy()).save(folder / f"{n:05d}.png")
    )


HAND_SET_TASKS = ("small",)  # where the hand-set flags were measured best before (bench/transfer.py)
TASKS = {"small": task_folder, "small-grey": fashion_small, "imbalanced": cifar10_lt, "full": cifar10_folder}


def run(folder: Path, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    import imgclf

    t0 = time.perf_counter()
    result = imgclf.train(data=str(folder), out=str(out), verbose=False, **settings)
    test = result.metrics["test"]
    search = result.metrics.get("search") or {}
    return {
        "accuracy": test["accuracy"],
        "balanced": test["balanced_accuracy"],
        "macro_f1": test["macro_f1"],
        "seconds": time.perf_counter() - t0,
        "model": f"{result.config.model.model} {result.metrics['data']['image_size']} px, "
        f"{result.metrics['epochs_run']} epochs"
        + (f" (search {search.get('search_seconds', 0):.0f} s)" if search else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["small", "small-grey", "imbalanced"], choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()}, {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for task in args.tasks:
            folder = TASKS[task]()
            for method in args.methods:
                if method == "hand-set" and task not in HAND_SET_TASKS:
                    continue
                r = run(folder, METHODS[method], Path(out) / f"{task}-{method}")
                rows.append({"task": task, "method": method, **r})
                print(
                    f"RESULT task={task} method={method} acc={r['accuracy']:.4f} balanced={r['balanced']:.4f} "
                    f"f1={r['macro_f1']:.4f} seconds={r['seconds']:.0f} model={r['model'].replace(' ', '_')}",
                    flush=True,
                )
    print("\n| task | method | accuracy | balanced accuracy | macro F1 | seconds | ratio | model |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["task"] == r["task"] and b["method"] == rows[0]["method"])
        print(
            f"| {r['task']} | {r['method']} | {r['accuracy']:.4f} | {r['balanced']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['seconds']:.0f} | {r['seconds'] / base['seconds']:.2f} | {r['model']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
