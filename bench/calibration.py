"""Calibration, measured: the expected calibration error (ECE, 15 bins) of default runs before and after the
temperature scaling `train` fits on the validation split, and the coverage a minimum confidence leaves.

    python -m bench.calibration                         # MNIST, Fashion-MNIST, CIFAR-10 (about 15 minutes)
    python -m bench.calibration --datasets mnist fashion-mnist

Each dataset trains with its default recipe (`imgclf train --data X`, seed 0) in this process, one after
another; MNIST and Fashion-MNIST from ../shared/data, CIFAR-10 from its JPEG copy there. The ECE is on the
test split, which the temperature never saw. Prints a table, then `RESULT dataset=X ece_before=.. ece_after=..`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from bench.run import SHARED, cifar10_folder, machine

DATASETS = ("mnist", "fashion-mnist", "cifar10")


def run(dataset: str) -> dict:
    import imgclf

    data = str(cifar10_folder()) if dataset == "cifar10" else dataset
    with tempfile.TemporaryDirectory() as out:
        result = imgclf.train(data=data, data_dir=str(SHARED), out=str(Path(out) / "run"), verbose=False)
    m = result.metrics
    coverage = {round(r["min_confidence"], 2): r for r in m["test"]["coverage"]}
    return {
        "dataset": dataset,
        "accuracy": m["test"]["accuracy"],
        "temperature": m["calibration"]["temperature"],
        "ece_before": m["calibration"]["test_ece_before"],
        "ece_after": m["calibration"]["test_ece_after"],
        "coverage_90": coverage[0.9]["coverage"],
        "accuracy_90": coverage[0.9]["accuracy"],
        "train_seconds": m["train_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    args = parser.parse_args(argv)
    rows = [run(d) for d in args.datasets]
    print(f"\nbench.calibration  {datetime.date.today()}  {machine()}  default recipes, seed 0")
    print(
        f"{'dataset':<15}{'test acc':>9}{'T':>7}{'ECE before':>12}{'ECE after':>11}{'at p>=0.9: answered':>21}{'accuracy':>10}{'train s':>9}"
    )
    for r in rows:
        print(
            f"{r['dataset']:<15}{r['accuracy']:>9.4f}{r['temperature']:>7.3f}{r['ece_before']:>12.4f}{r['ece_after']:>11.4f}"
            f"{r['coverage_90']:>21.1%}{r['accuracy_90']:>10.4f}{r['train_seconds']:>9.1f}"
        )
    for r in rows:
        print(
            f"RESULT dataset={r['dataset']} ece_before={r['ece_before']:.4f} ece_after={r['ece_after']:.4f} temperature={r['temperature']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
