"""Which flips keep the class, decided on the data (``flips=auto``), against flipping every folder (the
default before it), on real folders: digits should not be mirrored, photos should.

    python -m bench.flips                 # about 10 minutes on 2 CPU cores

Tasks (from ../shared/data, written once under .data/): ``digits`` (MNIST, 100 PNGs a class, 200 test a class),
``garments`` (Fashion-MNIST, the same counts), ``photos`` (CIFAR-10, 100 JPEGs a class), ``pasted`` (CIFAR-10
objects small in 256-px pictures, bench/photos.py) and ``canvases`` (several labels: 2,000 Fashion-MNIST canvases
of 1-4 items, bench/multilabel.py). For each: the decision, the held-out log losses it rests on, its seconds;
and on ``digits`` and ``garments`` the cnn's test accuracy trained with the decision and with every flip the
default used before (horizontal), in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch

from bench.photos import builtin_small, fashion_small, pasted
from bench.run import machine
from bench.transfer import task_folder


def digits_small() -> Path:
    return builtin_small("mnist")


def canvases() -> Path:
    from bench.multilabel import build

    return build(2000, 1000)[0]


TASKS = {
    "digits": digits_small,
    "garments": fashion_small,
    "photos": task_folder,
    "pasted": pasted,
    "canvases": canvases,
}
TRAINED = ("digits", "garments")


def decide(data_path: Path) -> tuple[str, dict[str, float], float]:
    from imgclf.config import TrainConfig
    from imgclf.data import load_data
    from imgclf.features.backbone import shared_backbone
    from imgclf.features.flips import decide_flips
    from imgclf.train.balance import balancer
    from imgclf.train.build import run_config

    settings = TrainConfig(data=str(data_path), model="lite0")
    data = load_data(settings.data_config)
    cfg = run_config(settings, data, "cpu")[0]
    t0 = time.perf_counter()
    decision = decide_flips(data, shared_backbone(torch.device("cpu")), cfg, balancer(data.num_classes, cfg), None)
    return decision.flips, decision.log_loss, time.perf_counter() - t0


def trained(folder: Path, flips: str, out: Path) -> float:
    import imgclf

    result = imgclf.train(data=str(folder), search="off", flips=flips, out=str(out), verbose=False)
    return float(result.metrics["test"]["accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()}, {machine()}", flush=True)
    print(
        "| task | decided | log loss: plain / mirrored / upended / transposed | s | cnn test acc: decided / horizontal |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for task in args.tasks:
            path = TASKS[task]()
            flips, losses, seconds = decide(path)
            shown = " / ".join(f"{losses[k]:.3f}" for k in ("plain", "horizontal", "vertical", "transpose"))
            accuracy = "-"
            if task in TRAINED:
                ours = trained(path, flips, Path(out) / f"{task}-auto")
                before = trained(path, "horizontal", Path(out) / f"{task}-horizontal")
                accuracy = f"{ours:.4f} / {before:.4f}"
            print(f"| {task} | {flips} | {shown} | {seconds:.0f} | {accuracy} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
