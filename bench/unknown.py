""" "None of these", measured: how many images of no class a run accepts while it keeps most real ones.

CIFAR-10's six animal classes (bird, cat, deer, dog, frog, horse) are the task: 500 training images a class
and their 6,000 test images, from the shared JPEG copy; its four vehicle classes' 4,000 test images are the
unrelated images a user would collect (`evaluate --negatives`). Three runs are measured: imgclf's default (the
search within the budget), the scratch cnn (`--model cnn --search off`) and lite0 fine-tuned at 96 px within
the budget (`--model lite0 --image-size 96`). Printed per run and score (the
calibrated top probability, familiarity = the k-NN distance to the training images' embeddings): unrelated
images accepted while 99% / 95% / 90% of the real ones are kept, the AUROC, and which score the run now uses.

    python -m bench.unknown             # about 20 minutes here
    python -m bench.unknown --runs lite0  # one of them
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tarfile
import time
from pathlib import Path

from bench.run import DATA, SHARED, machine

ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")
PER_CLASS = 500


def folders() -> tuple[Path, Path]:
    """The animals' folder (train/ 500 a class, test/ all) and the vehicles' test images, as hard links."""
    source = DATA / "cifar10"
    if not source.is_dir():
        with tarfile.open(SHARED / "cifar10-jpg.tar.gz") as tar:
            tar.extractall(DATA, filter="data")
    animals, vehicles = DATA / "cifar-animals", DATA / "cifar-vehicles"
    if not animals.is_dir():
        for split, count in (("train", PER_CLASS), ("test", None)):
            for name in ANIMALS:
                (animals / split / name).mkdir(parents=True)
                for f in sorted((source / split / name).iterdir())[:count]:
                    os.link(f, animals / split / name / f.name)
        vehicles.mkdir()
        for name in VEHICLES:
            for f in sorted((source / "test" / name).iterdir()):
                os.link(f, vehicles / f"{name}_{f.name}")
    return animals, vehicles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300, help="seconds for the default and lite0 runs")
    parser.add_argument("--runs", nargs="+", default=["imgclf", "cnn", "lite0"], help="which runs (first words)")
    args = parser.parse_args(argv)
    import imgclf

    animals, vehicles = folders()
    runs = {
        name: settings
        for name, settings in {
            "imgclf default (search)": {"budget": args.budget},
            "cnn from scratch": {"model": "cnn", "search": "off"},
            "lite0 fine-tuned at 96 px": {"model": "lite0", "image_size": 96, "budget": args.budget},
        }.items()
        if name.split()[0] in args.runs
    }
    rows = []
    for name, settings in runs.items():
        start = time.perf_counter()
        trained = imgclf.train(
            data=str(animals), out=str(DATA / "unknown-runs" / name.split()[0]), data_dir=str(DATA), **settings
        )
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = imgclf.evaluate(trained.run_dir, negatives=vehicles)
        rows.append((name, trained, train_seconds, time.perf_counter() - start, result))
    print(f"\nbench.unknown  {datetime.date.today()}  {machine()}")
    print("CIFAR-10 animals (6 classes, 500 a class) as the task; 4,000 vehicle test images as unrelated images")
    print(
        f"{'run':<26}{'test acc':>9}{'score':>13}{'AUROC':>8}{'accepted @99%':>15}{'@95%':>7}{'@90%':>7}"
        f"{'used':>6}{'train s':>9}{'measure s':>11}"
    )
    for name, trained, train_seconds, seconds, result in rows:
        for score, curve in result["curves"].items():
            at = {
                share: min(curve, key=lambda r: abs(r["coverage"] - share))["unrelated_accepted"]
                for share in (0.99, 0.95, 0.9)
            }
            used = "yes" if score == result["chosen"] else ""
            print(
                f"{name:<26}{trained.accuracy:>9.4f}{score:>13}{result['auroc'][score]:>8.3f}{at[0.99]:>15.1%}"
                f"{at[0.95]:>7.1%}{at[0.9]:>7.1%}{used:>6}{train_seconds:>9.0f}{seconds:>11.0f}"
            )
            print(
                f"RESULT run={name.split()[0]} score={score} accepted_at_95={at[0.95]:.3f} auroc={result['auroc'][score]:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
