"""Imbalanced classes, measured: which treatment imgclf applies by default when classes are imbalanced.

    python -m bench.imbalance                  # CIFAR-10 (colour) and Fashion-MNIST (grey), both thinned to 1:20
    python -m bench.imbalance --tasks cifar10-lt

Each task keeps, for class i of 10, ``N_MAX x 20^(-i/9)`` training images (500 down to 25: the long-tailed
profile of Cui et al. 2019) and tests on a balanced held-out set (200 images per class), so balanced
accuracy and macro F1 are what a user with a rare class cares about. Treatments: none; inverse-frequency
loss weights (imgclf's old `class_weights=auto`); inverse square root; Cui et al.'s effective number
(beta 0.999); logit adjustment (Menon et al. 2021, tau 1); the balanced sampler; focal loss (Lin et al. 2017,
gamma 2) alone and with the sqrt weights (the cnn only: the probe's loss is cross-entropy). Each with two learners:
imgclf's scratch ``cnn`` (its recipe, `search=off`) and the shipped ``lite0``'s linear probe at 96 px on
cached features. The validation split is imgclf's own (10% of the thinned training images, stratified).
Prints one table; ``RESULT`` lines for the log.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.run import DATA, SHARED, cifar10_folder, machine

N_MAX, RATIO, TEST_PER_CLASS = 500, 20, 200
TREATMENTS: dict[str, dict[str, Any]] = {
    "none (today)": {},
    "inverse (old auto)": {"class_weights": "inverse"},
    "sqrt": {"class_weights": "sqrt"},
    "effective": {"class_weights": "effective"},
    "logit-adjust": {"logit_adjustment": 1.0},
    "balanced sampler": {"sampler": "balanced"},
    # Lin et al. 2017's focal loss, gamma 2 (the CIFAR-10 tutorial's suggestion for hard or imbalanced data):
    # against "none" (the same but cross-entropy) and against "sqrt" (today's default for imbalanced classes)
    "focal": {"loss": "focal", "class_weights": "none", "monitor": "val_loss"},
    "focal + sqrt": {"loss": "focal", "class_weights": "sqrt"},  # focal with today's default weights
}
PROBE_SIZE = 96


def kept_per_class(i: int, classes: int = 10) -> int:
    return round(N_MAX * RATIO ** (-i / (classes - 1)))


def _write_folder(target: Path, splits: dict[str, list[tuple[str, list[Path] | list[Any]]]], save: Any) -> Path:
    staging = Path(tempfile.mkdtemp(dir=DATA))
    for split, by_class in splits.items():
        for name, items in by_class:
            (staging / split / name).mkdir(parents=True)
            for n, item in enumerate(items):
                save(item, staging / split / name, n)
    staging.rename(target)
    return target


def cifar10_lt() -> Path:
    target = DATA / "cifar10-lt20"
    if (target / "test").is_dir():
        return target
    source = cifar10_folder()
    classes = sorted(d.name for d in (source / "train").iterdir())
    splits = {
        "train": [(c, sorted((source / "train" / c).iterdir())[: kept_per_class(i)]) for i, c in enumerate(classes)],
        "test": [(c, sorted((source / "test" / c).iterdir())[:TEST_PER_CLASS]) for c in classes],
    }
    return _write_folder(target, splits, lambda path, folder, n: shutil.copy(path, folder / path.name))


def fashion_lt() -> Path:
    """Fashion-MNIST's first images of each class as PNG files (grey, 28x28), thinned the same way."""
    target = DATA / "fashion-mnist-lt20"
    if (target / "test").is_dir():
        return target
    from PIL import Image

    from imgclf.config import DataConfig
    from imgclf.data.builtin import fashion_mnist

    raw = fashion_mnist(DataConfig(data="fashion-mnist", data_dir=str(SHARED)))
    splits: dict[str, list[tuple[str, list[Any]]]] = {}
    for split, keep in (("train", kept_per_class), ("test", lambda i: TEST_PER_CLASS)):
        part = raw.train if split == "train" else raw.test
        assert part is not None
        splits[split] = [
            (name.replace("/", "-"), list(part.images[part.labels == i][: keep(i)]))
            for i, name in enumerate(raw.classes)
        ]
    return _write_folder(
        target, splits, lambda image, folder, n: Image.fromarray(image[0].numpy()).save(folder / f"{n:05d}.png")
    )


TASKS = {"cifar10-lt": cifar10_lt, "fashion-lt": fashion_lt}


def cnn_row(folder: Path, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    import imgclf

    t0 = time.perf_counter()
    result = imgclf.train(
        data=str(folder), model="cnn", search="off", out=str(out), verbose=False, cache=True, **settings
    )
    test = result.metrics["test"]
    return {**_scores(test), "seconds": time.perf_counter() - t0}


def _scores(test: dict[str, Any]) -> dict[str, float]:
    return {"accuracy": test["accuracy"], "balanced": test["balanced_accuracy"], "macro_f1": test["macro_f1"]}


def probe_rows(folder: Path, treatments: list[str]) -> dict[str, dict[str, Any]]:
    """Each treatment's probe over lite0's features at PROBE_SIZE, trained on imgclf's train split."""
    from imgclf.config import TrainConfig
    from imgclf.data import load_data
    from imgclf.features.backbone import Backbone
    from imgclf.features.probe import fit_probe
    from imgclf.metrics import compute_metrics
    from imgclf.recipes import probe_recipe
    from imgclf.train.balance import balance_for
    from imgclf.train.build import run_config

    device = torch.device("cpu")
    base = TrainConfig(data=str(folder), model="lite0", image_size=PROBE_SIZE)
    data = load_data(base.data_config)
    backbone = Backbone(device)
    cache = base.data_config.cache_dir
    t0 = time.perf_counter()
    train, val, test = (
        backbone.features(s.images, cache, f"bench-{data.name}-{PROBE_SIZE}").values
        for s in (data.train, data.val, data.test)
    )
    feature_seconds = time.perf_counter() - t0
    rows = {}
    for name in treatments:
        settings = TREATMENTS[name]
        if settings.get("loss"):  # the probe's own loss is cross-entropy: focal is for the trained cnn
            continue
        t0 = time.perf_counter()
        given = TrainConfig(**{**base.to_dict(), **settings})
        cfg = run_config(given, data, "cpu")[0]
        if not settings:  # "none": no treatment, even where the rule would add one
            cfg = cfg.replace(logit_adjustment=0.0, class_weights="none", sampler="shuffle")
        probe = fit_probe(
            (train, data.train.labels),
            (val, data.val.labels),
            data.num_classes,
            probe_recipe(cfg, len(data.train)),
            balance_for(data.class_counts(), data.train.labels, cfg),
        )
        probs = probe.logits(test).softmax(1)
        rows[name] = {
            **_scores(compute_metrics(probs, data.test.labels, data.classes)),
            "seconds": time.perf_counter() - t0,
        }
    print(f"# lite0 features at {PROBE_SIZE} px: {feature_seconds:.1f} s (0 when cached)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--learners", nargs="+", default=["cnn", "probe"], choices=["cnn", "probe"])
    parser.add_argument("--treatments", nargs="+", default=list(TREATMENTS), choices=list(TREATMENTS))
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()}, {machine()}; training images per class {[kept_per_class(i) for i in range(10)]}")
    rows = []
    for task in args.tasks:
        folder = TASKS[task]()
        if "probe" in args.learners:
            for name, r in probe_rows(folder, args.treatments).items():
                rows.append({"task": task, "learner": "lite0 probe", "treatment": name, **r})
        if "cnn" in args.learners:
            with tempfile.TemporaryDirectory() as out:
                for name in args.treatments:
                    settings = TREATMENTS[name]
                    # "none" is today's plain run: the rule's treatment switched off explicitly
                    given = settings or {"class_weights": "none", "monitor": "val_loss"}
                    r = cnn_row(folder, given, Path(out) / name.replace(" ", "-").replace("+", "and"))
                    rows.append({"task": task, "learner": "cnn", "treatment": name, **r})
                    print(
                        f"# {task} cnn {name}: balanced accuracy {r['balanced']:.4f} in {r['seconds']:.0f} s",
                        flush=True,
                    )
    print("\n| task | learner | treatment | accuracy | balanced accuracy | macro F1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['learner']} | {r['treatment']} | {r['accuracy']:.4f} | {r['balanced']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['seconds']:.1f} |"
        )
    for r in rows:
        print(
            f"RESULT task={r['task']} learner={r['learner'].replace(' ', '-')} "
            f"treatment={r['treatment'].replace(' ', '').replace('(today)', '')} "
            f"acc={r['accuracy']:.4f} balanced={r['balanced']:.4f} f1={r['macro_f1']:.4f} seconds={r['seconds']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
