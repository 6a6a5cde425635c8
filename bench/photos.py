"""Your own photos: the folder default (the search over lite0 and the cnn) against today's default and
against the best hand-set flags, on real folders it was not tuned on.

    python -m bench.photos                       # small colour, small grey, imbalanced colour (about 40 minutes)
    python -m bench.photos --tasks full          # the whole CIFAR-10 JPEG folder (about 30 minutes)
    IMGCLF_PREVIOUS_SRC=/path/to/worktree/src python -m bench.photos --methods previous default \
        --tasks pasted small small-grey imbalanced   # an earlier commit's default beside this one's

Tasks (all from ../shared/data, written once as folders of image files under .data/):
- ``small``: 100 training images per CIFAR-10 class (JPEG, 32 px, colour), 200 test images per class;
- ``small-grey``: 100 per Fashion-MNIST class (PNG, 28 px, grey), 200 test images per class;
- ``imbalanced``: CIFAR-10 thinned to 1:20 (500 down to 25 per class, bench/imbalance.py), balanced test;
- ``pasted``: where the detail is small in a large picture: each CIFAR-10 photo scaled to 40-64 px and pasted
  into a 256-px background cut from another class's photo (100 training, 100 test pictures a class, JPEG);
- ``full``: the whole CIFAR-10 JPEG folder (50,000 + 10,000).
Each run is its own process (``previous``: with an earlier commit's ``src/`` first on the path). Besides the
test scores, a searched run reports its probe's validation score and its fine-tune's first epoch's.
Methods: ``today`` is imgclf 0.2's folder default (`search=off`, no imbalance treatment: the cnn recipe);
``previous`` is an earlier commit's `imgclf train --data FOLDER` (``$IMGCLF_PREVIOUS_SRC``);
``default`` is what `imgclf train --data FOLDER` does now (search within the default budget, imbalance rule);
``hand-set`` is the best flags a user had before: lite0's ImageNet weights at 96 px, fine-tuned for the same
default budget (`--model lite0 --image-size 96 --budget 600`). "seconds" is the whole call: decoding, search,
training and test. ``hand-set`` runs on ``small`` only, where bench/transfer.py measured
those flags best. Prints a table and ``RESULT`` lines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.imbalance import _write_folder, cifar10_lt
from bench.run import DATA, SHARED, cifar10_folder, machine
from bench.transfer import task_folder

METHODS: dict[str, dict[str, Any]] = {
    "today": {"search": "off", "class_weights": "none", "monitor": "val_loss"},
    "previous": {"search": "auto"},  # the default of the commit in $IMGCLF_PREVIOUS_SRC (a worktree's src/)
    "default": {"search": "auto"},
    "hand-set": {"model": "lite0", "image_size": 96, "budget": 600},
}


def fashion_small() -> Path:
    return builtin_small("fashion-mnist")


def builtin_small(dataset: str) -> Path:
    """100 PNGs a class of a built-in grey dataset (mnist, fashion-mnist) and 200 test PNGs a class."""
    target = DATA / f"{dataset}-100-per-class"
    if (target / "test").is_dir():
        return target
    from PIL import Image

    from imgclf.config import DataConfig
    from imgclf.data import builtin

    raw = getattr(builtin, dataset.replace("-", "_"))(DataConfig(data=dataset, data_dir=str(SHARED)))
    assert raw.test is not None
    splits = {
        split: [(name, list(part.images[part.labels == i][:count])) for i, name in enumerate(raw.classes)]
        for split, part, count in (("train", raw.train, 100), ("test", raw.test, 200))
    }
    return _write_folder(
        target, splits, lambda image, folder, n: Image.fromarray(image[0].numpy()).save(folder / f"{n:05d}.png")
    )


PASTED_SIDE = 256  # the large picture's side
PASTED_OBJECT = (40, 64)  # the pasted object's side, drawn per image: the class lives in 2.5-6% of the picture


def pasted(train_per_class: int = 100, test_per_class: int = 100) -> Path:
    """Where the detail is small in a large picture: each CIFAR-10 photo (the object) scaled to 40-64 px and
    pasted at a random place into a 256-px background cut from another class's photo (blurred, upscaled), as
    JPEG. 100 training and 100 test pictures a class; seeded, written once."""
    target = DATA / "cifar10-pasted-256"
    if (target / "test").is_dir():
        return target
    import random

    from PIL import Image, ImageFilter

    source = cifar10_folder()
    classes = sorted(d.name for d in (source / "train").iterdir())
    files = {c: sorted((source / "train" / c).iterdir()) for c in classes}
    rng = random.Random(0)
    per_class = train_per_class + test_per_class

    def compose(path: Path, folder: Path, n: int) -> None:
        own = path.parent.name
        other = rng.choice([c for c in classes if c != own])
        background = Image.open(rng.choice(files[other][per_class:])).convert("RGB")
        background = background.resize((PASTED_SIDE, PASTED_SIDE), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        side = rng.randint(*PASTED_OBJECT)
        thing = Image.open(path).convert("RGB").resize((side, side), Image.BICUBIC)
        background.paste(thing, (rng.randint(0, PASTED_SIDE - side), rng.randint(0, PASTED_SIDE - side)))
        background.save(folder / f"{n:05d}.jpg", quality=90)

    splits = {
        "train": [(c, files[c][:train_per_class]) for c in classes],
        "test": [(c, files[c][train_per_class:per_class]) for c in classes],
    }
    return _write_folder(target, splits, compose)


HAND_SET_TASKS = ("small",)  # where the hand-set flags were measured best before (bench/transfer.py)
TASKS = {
    "small": task_folder,
    "small-grey": fashion_small,
    "imbalanced": cifar10_lt,
    "pasted": pasted,
    "full": cifar10_folder,
}


RUNNER = """
import json, sys, time
import imgclf
folder, out, settings, verbose = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
t0 = time.perf_counter()
result = imgclf.train(data=folder, out=out, verbose=verbose, **settings)
seconds = time.perf_counter() - t0
test, search = result.metrics["test"], result.metrics.get("search") or {}
monitor = "val_balanced_acc" if search.get("metric") == "balanced accuracy" else "val_acc"
first = result.history[0] if result.history else {}
probe = search.get("probe_val") or {}
print("RUNNER " + json.dumps({
    "accuracy": test["accuracy"], "balanced": test["balanced_accuracy"], "macro_f1": test["macro_f1"],
    "seconds": seconds, "model": result.config.model.model, "px": result.metrics["data"]["image_size"],
    "epochs": result.metrics["epochs_run"], "best_epoch": result.metrics.get("best_epoch"),
    "search_seconds": search.get("search_seconds"), "flips": getattr(result.config.augment, "flips", "-"),
    "probe_val": probe.get(monitor), "first_epoch_val": first.get(monitor),
    "trials": [(t["candidate"], t["image_size"], round(t["score"], 4)) for t in search.get("trials", [])],
}))
"""


def run(
    folder: Path, settings: dict[str, Any], out: Path, src: str | None = None, log: Path | None = None
) -> dict[str, Any]:
    """One `imgclf.train` in its own process: this tree's imgclf, or the one under ``src`` (an earlier commit's
    worktree, for today's default beside the new one in the same run); its console written to ``log``."""
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    command = [sys.executable, "-c", RUNNER, str(folder), str(out), json.dumps(settings), "1" if log else "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if log:
        log.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RUNNER ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{settings} on {folder} failed:\n{done.stderr[-3000:]}")
    r = json.loads(lines[-1][len("RUNNER ") :])
    r["model"] = f"{r['model']} {r['px']} px, {r['epochs']} epochs" + (
        f" (search {r['search_seconds']:.0f} s)" if r["search_seconds"] else ""
    )
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["small", "small-grey", "imbalanced"], choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--logs", type=Path, help="write each run's console (what the search printed) here")
    args = parser.parse_args(argv)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    print(f"# {datetime.date.today()}, {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for task in args.tasks:
            folder = TASKS[task]()
            for method in args.methods:
                if method == "hand-set" and task not in HAND_SET_TASKS:
                    continue
                src = os.environ["IMGCLF_PREVIOUS_SRC"] if method == "previous" else None
                log = args.logs / f"{task}-{method}.log" if args.logs else None
                r = run(folder, METHODS[method], Path(out) / f"{task}-{method}", src, log)
                rows.append({"task": task, "method": method, **r})
                print(
                    f"RESULT task={task} method={method} acc={r['accuracy']:.4f} balanced={r['balanced']:.4f} "
                    f"f1={r['macro_f1']:.4f} seconds={r['seconds']:.0f} model={r['model'].replace(' ', '_')} "
                    f"probe_val={r.get('probe_val')} first_epoch_val={r.get('first_epoch_val')} "
                    f"best_epoch={r.get('best_epoch')} flips={r.get('flips')} trials={r.get('trials')}",
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
