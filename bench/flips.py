"""Which flips keep the class, decided on the data (``flips=auto``), against flipping every folder (the
default before it), on real folders: digits should not be mirrored, photos should.

    python -m bench.flips                 # about 10 minutes on 2 CPU cores

Tasks (from ../shared/data, written once under .data/): ``digits`` (MNIST, 100 PNGs a class, 200 test a class),
``garments`` (Fashion-MNIST, the same counts), ``photos`` (CIFAR-10, 100 JPEGs a class), ``pasted`` (CIFAR-10
objects small in 256-px pictures, bench/photos.py) and ``canvases`` (several labels: 2,000 Fashion-MNIST canvases
of 1-4 items, bench/multilabel.py). For each: the decision, the held-out log losses it rests on, its seconds;
and on ``digits`` and ``garments`` the cnn's test accuracy trained with the decision, with no flips and with the
mirror every folder had before, in the same run.
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
from imgclf.features.flips import FlipDecision


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
FLIPS_TRAINED = ("none", "horizontal")  # the cnn trained with each: whether the decision was the better one


def decide(data_path: Path) -> tuple[FlipDecision, float]:
    from imgclf.config import TrainConfig
    from imgclf.data import load_data
    from imgclf.features.backbone import shared_backbone
    from imgclf.features.flips import decide_flips
    from imgclf.train.build import run_config

    settings = TrainConfig(data=str(data_path), model="lite0")
    data = load_data(settings.data_config)
    cfg = run_config(settings, data, "cpu")[0]
    t0 = time.perf_counter()
    decision = decide_flips(data, shared_backbone(torch.device("cpu")), cfg, None)
    return decision, time.perf_counter() - t0


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
        "| task | decided | copies told apart: mirrored / upended / transposed (± se; 0.5 is chance) | s "
        "| cnn test acc: decided / none / horizontal |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for task in args.tasks:
            path = TASKS[task]()
            decision, seconds = decide(path)
            rates, stderr = decision.told_apart, decision.stderr
            shown = " / ".join(f"{rates[k]:.3f} ± {stderr[k]:.3f}" for k in ("horizontal", "vertical", "transpose"))
            accuracy = "-"
            if task in TRAINED:
                scores = {flips: trained(path, flips, Path(out) / f"{task}-{flips}") for flips in FLIPS_TRAINED}
                accuracy = f"{scores[decision.flips]:.4f} / " + " / ".join(f"{scores[f]:.4f}" for f in FLIPS_TRAINED)
            print(f"| {task} | {decision.flips} | {shown} | {seconds:.0f} | {accuracy} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
