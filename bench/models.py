"""imgclf's `cnn` against the plain network and the tutorial CNNs, same data, same recipe, same machine.

    python -m bench.models [--datasets digits mnist fashion-mnist cifar10] [--epochs N] [--models ...]

Built-in datasets are read from ../shared/data (or $IMGCLF_DATA); CIFAR-10 is the shared JPEG copy,
unpacked once into .data/ and trained on as a folder of images (32x32). Prints one table: dataset,
model, test accuracy, train seconds, images/s, parameters, and the ratio of each model's time to cnn's.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

import imgclf
from bench.run import SHARED, cifar10_folder
from imgclf.plots.tables import table

MODELS = ["mlp", "cnn2", "lenet5", "cnn4", "cnn"]


def dataset_settings(name: str) -> dict:
    if name == "cifar10":
        return {"data": str(cifar10_folder()), "image_size": 32}
    return {"data": name, "data_dir": str(SHARED)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "fashion-mnist", "cifar10"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--epochs", nargs="+", default=[], metavar="DATASET=N", help="override the recipe's epochs")
    args = parser.parse_args()
    epochs = {k: int(v) for k, v in (item.split("=") for item in args.epochs)}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for dataset in args.datasets:
            settings = dataset_settings(dataset)
            cnn_seconds = None
            for model in reversed(args.models):  # cnn first, so the others can be given as a ratio
                t0 = time.perf_counter()
                try:
                    result = imgclf.train(
                        model=model,
                        out=f"{out}/{dataset}-{model}",
                        verbose=False,
                        **settings,
                        **({"epochs": epochs[dataset]} if dataset in epochs else {}),
                    )
                except imgclf.ImgclfError as exc:  # e.g. LeNet-5 cannot take 8x8 digits
                    rows.append([dataset, model, "-", "n/a", "-", "-", "-", "-", str(exc)[:60]])
                    continue
                m = result.metrics
                cnn_seconds = cnn_seconds or m["train_seconds"]
                rows.append(
                    [
                        dataset,
                        model,
                        result.config.schedule.epochs,
                        f"{m['test']['accuracy']:.4f}",
                        f"{m['train_seconds']:.1f}",
                        f"{m['images_per_second']:.0f}",
                        f"{m['parameters']:,}",
                        f"{m['train_seconds'] / cnn_seconds:.2f}",
                        f"{time.perf_counter() - t0:.0f}",
                    ]
                )
                print(" | ".join(map(str, rows[-1])), flush=True)
    print()
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, imgclf {imgclf.__version__}"
    )
    print(
        table(["dataset", "model", "epochs", "test acc", "train s", "images/s", "params", "time / cnn", "wall s"], rows)
    )


if __name__ == "__main__":
    main()
