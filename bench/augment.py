"""Stronger augmentation, measured: mixup, CutMix, RandAugment and TrivialAugment against today's recipe, at the
same training time, in one run.

    python -m bench.augment                       # CIFAR-10 JPEG folder (colour) and Fashion-MNIST (grey)
    python -m bench.augment --tasks fashion --budget-fashion 60

Each variant trains imgclf's scratch ``cnn`` with today's CPU recipe (the folder recipe for the CIFAR-10 JPEGs at
its 8 epochs for the whole folder, here on 1,000 JPEGs a class so that five variants fit a session; the
Fashion-MNIST recipe, all 60,000 images), `search=off`, seed 0; only the augmentation differs, so the
accuracy is the recipe's with it and the seconds say what it costs (the same epochs: a variant "wins within the
same time" only if it is more accurate and no slower, or more accurate than today's recipe given its extra
seconds). Epochs are fixed rather than a `budget`, so that other work on this shared machine changes the seconds
but not which epochs ran. The test split is the dataset's own (10,000 images). Prints one table and ``RESULT``
lines for the log; the ratio columns compare each variant with today's recipe.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.run import SHARED, machine
from bench.transfer import task_folder

VARIANTS: dict[str, dict[str, Any]] = {
    "today": {},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
    "randaugment": {"augment": "randaugment"},
    "trivialaugment": {"augment": "trivialaugment"},
}


PER_CLASS = 1000  # CIFAR-10 training JPEGs per class (and its whole test split): a fifth of the folder's run


def tasks() -> dict[str, dict[str, Any]]:
    return {
        "cifar10-jpeg": {"data": str(task_folder(PER_CLASS, 1000)), "image_size": 32, "epochs": 8},
        "fashion": {"data": "fashion-mnist", "data_dir": str(SHARED)},
    }


def run_variant(task: dict[str, Any], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    import imgclf

    t0 = time.perf_counter()
    result = imgclf.train(model="cnn", search="off", out=str(out), verbose=False, seed=0, **task, **settings)
    m = result.metrics
    return {
        "accuracy": m["test"]["accuracy"],
        "macro_f1": m["test"]["macro_f1"],
        "epochs": result.config.schedule.epochs,
        "train_seconds": m["train_seconds"],
        "images_per_second": m["images_per_second"],
        "seconds": time.perf_counter() - t0,
    }


def step_costs(task: dict[str, Any], variants: list[str], rounds: int = 5) -> dict[str, float]:
    """Each variant's training seconds per image (its whole step: batch, augmentation, mixing, forward, backward),
    timed by the trainer's own probe in interleaved rounds (A B C ... A B C ...), the median per variant: a
    machine busy with other work slows every variant alike, which separate full runs cannot promise."""
    import statistics

    import imgclf
    from imgclf.data import load_data
    from imgclf.train.build import Prepared, build_model, run_config, trainer_for
    from imgclf.train.speed import seconds_per_image

    given = imgclf.TrainConfig(model="cnn", search="off", **task)
    data = load_data(given.data_config)
    device = torch.device("cpu")
    timings: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            cfg = run_config(given.replace(**VARIANTS[variant]), data, "cpu")[0]
            prepared = Prepared(cfg, data, device)
            trainer = trainer_for(prepared, build_model(cfg.model, data, device), val_batches=None)
            timings[variant].append(seconds_per_image(trainer, min_seconds=2.0))
    return {v: statistics.median(t) for v, t in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["cifar10-jpeg", "fashion"], choices=["cifar10-jpeg", "fashion"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, help="instead of each recipe's epochs (a quicker check)")
    parser.add_argument("--step-costs-only", action="store_true", help="only the interleaved timing of each step")
    args = parser.parse_args(argv)
    if args.step_costs_only:
        for name in args.tasks:
            costs = step_costs(tasks()[name], args.variants)
            for variant, cost in costs.items():
                print(
                    f"RESULT task={name} variant={variant.replace(' ', '-')} step_us_per_image={cost * 1e6:.1f} "
                    f"vs_today={cost / costs.get('today', cost):.2f}x",
                    flush=True,
                )
        return 0
    print(f"# {datetime.date.today()}, {machine()}; cnn, search off, seed 0, each recipe's epochs")
    chosen = tasks()
    if args.epochs:
        chosen = {name: {**task, "epochs": args.epochs} for name, task in chosen.items()}
    rows = []
    for name in args.tasks:
        with tempfile.TemporaryDirectory() as out:
            for variant in args.variants:
                r = run_variant(chosen[name], VARIANTS[variant], Path(out) / variant.replace(" ", "-"))
                rows.append({"task": name, "variant": variant, **r})
                print(
                    f"RESULT task={name} variant={variant.replace(' ', '-')} acc={r['accuracy']:.4f} "
                    f"f1={r['macro_f1']:.4f} epochs={r['epochs']:g} train_s={r['train_seconds']:.1f} "
                    f"img_s={r['images_per_second']:.0f} total_s={r['seconds']:.1f}",
                    flush=True,
                )
    base = {r["task"]: r for r in rows if r["variant"] == "today"}
    print("\n| task | augmentation | test accuracy | vs today | epochs | training s | images/s | vs today |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get(r["task"], r)
        print(
            f"| {r['task']} | {r['variant']} | {r['accuracy']:.4f} | {r['accuracy'] - b['accuracy']:+.4f} | "
            f"{r['epochs']:g} | {r['train_seconds']:.0f} | {r['images_per_second']:.0f} | "
            f"{r['images_per_second'] / b['images_per_second']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
