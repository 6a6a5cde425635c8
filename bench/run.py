"""imgclf against the tutorial recipes it replaces: one table of task, method, accuracy, seconds, images/s.

    python -m bench --suite cpu            # MNIST, Fashion-MNIST, CIFAR-10, a 60k JPEG folder, predict
    python -m bench --suite gpu            # CIFAR-10 on one GPU (run through the device tool)
    python -m bench --tasks mnist fashion  # some tasks only

Every method runs in its own process (clean timing and peak memory), one after another, on the same
data: ../shared/data (or $IMGCLF_SHARED_DATA); CIFAR-10 is the shared JPEG copy, unpacked once into
.data/ and trained on as a folder of images at 32x32. "train s" is training time only (decoding and
evaluation apart; for the compiled GPU runs, compile time is its own column). "ratio" is the method's
time over the baseline's, the task's first method (the tutorial recipe, or what imgclf did before). The last column checks the issue's targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMGCLF_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = REPO / ".data"

# task -> [(method, description)], the tutorial recipe first
SUITES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "cpu": {
        "mnist": [
            ("tutorial", "2-conv CNN, Adam, batch 100, 2 epochs, DataLoader+PIL"),
            ("imgclf", "imgclf train --data mnist"),
        ],
        "fashion": [
            ("tutorial", "apparels CNN (2x4 filters), Adam 0.07, 25 full-batch epochs"),
            ("imgclf", "imgclf train --data fashion-mnist"),
            ("imgclf-long", "imgclf train --data fashion-mnist --budget 300"),
        ],
        "cifar10": [
            ("tutorial", "LeNet, SGD, batch 4, 10 epochs, DataLoader+PIL"),
            ("imgclf", "imgclf train --data cifar10/ --image-size 32"),
        ],
        "folder": [
            ("tutorial", "ImageFolder + PIL + DataLoader (2 workers), one epoch"),
            ("imgclf", "decode + cache, then load the cache"),
        ],
        "folder-size": [
            ("imgclf-0.1", "imgclf 0.1's folder default, 64 px: --image-size 64 --epochs 1"),
            ("imgclf", "imgclf train --data cifar10/ --epochs 1: the size from the images"),
        ],
        "predict": [
            ("tutorial", "per-image PIL transforms + DataLoader, batch 256"),
            ("imgclf", "Classifier.predict_proba, batch 256"),
        ],
    },
    "gpu": {
        "cifar10-gpu": [
            ("tutorial-resnet18", "ResNet-18, SGD 1e-3, batch 64, 10 epochs, DataLoader+PIL"),
            ("tutorial-cnn4", "4-conv dropout CNN, Adam, batch 32, 8 epochs"),
            ("imgclf", "imgclf train --data cifar10/ --image-size 32 (5 seeds)"),
            ("imgclf-long", "imgclf train ... --target-accuracy 0.934"),
        ],
    },
}

TARGETS = {  # (task, method) -> (what, check(result, tutorial result))
    ("mnist", "imgclf"): (
        ">= 0.993 in <= 0.5x",
        lambda r, t: r["accuracy"] >= 0.993 and r["train_seconds"] <= 0.5 * t["train_seconds"],
    ),
    ("fashion", "imgclf"): (">= 0.925 in <= 60 s", lambda r, t: r["accuracy"] >= 0.925 and r["train_seconds"] <= 60),
    ("fashion", "imgclf-long"): (
        ">= 0.94 in <= 300 s",
        lambda r, t: r["accuracy"] >= 0.94 and r["train_seconds"] <= 300,
    ),
    ("cifar10", "imgclf"): (
        ">= 0.85 in <= 1x, < 3 GB",
        lambda r, t: r["accuracy"] >= 0.85 and r["train_seconds"] <= t["train_seconds"] and r["peak_rss_mb"] < 3072,
    ),
    ("folder", "imgclf"): ("first run <= 30 s", lambda r, t: r["train_seconds"] <= 30),
    ("predict", "imgclf"): (">= 5000 images/s", lambda r, t: r["images_per_second"] >= 5000),
    ("cifar10-gpu", "imgclf"): (
        ">= 0.907 in <= 2.5 s",
        lambda r, t: r["accuracy"] >= 0.907 and r["train_seconds"] <= 2.5,
    ),
    ("cifar10-gpu", "imgclf-long"): (
        ">= 0.934 in <= 17 s",
        lambda r, t: r["accuracy"] >= 0.934 and r["train_seconds"] <= 17,
    ),
}


# ---------------------------------------------------------------- data


def cifar10_folder() -> Path:
    target = DATA / "cifar10"
    if not (target / "test").is_dir():
        DATA.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "cifar10-jpg.tar.gz") as tar:
            tar.extractall(DATA, filter="data")
    return target


def _splits(data: str, **settings: Any):
    """(train images, labels), (test images, labels) as uint8 tensors, as imgclf loads them."""
    from imgclf.config import DataConfig
    from imgclf.data import load_data

    bundle = load_data(DataConfig(data=data, data_dir=str(SHARED), cache=False, **settings))
    train_images = torch.cat([bundle.train.images, bundle.val.images])
    train_labels = torch.cat([bundle.train.labels, bundle.val.labels])
    return (train_images, train_labels), (bundle.test.images, bundle.test.labels)


def _imgclf(seed: int = 0, **settings: Any) -> dict[str, Any]:
    import imgclf

    with tempfile.TemporaryDirectory() as out:
        settings = {"data_dir": str(SHARED), **settings}
        result = imgclf.train(out=str(Path(out) / "run"), verbose=False, seed=seed, **settings)
        m = result.metrics
        cfg = result.config
    return {
        "accuracy": m.accuracy,
        "train_seconds": m.train_seconds,
        "compile_seconds": m.compile_seconds,
        "images_per_second": m.images_per_second,
        "setup": f"{cfg.model.model} {cfg.model.model_args or ''} {cfg.schedule.epochs:g} ep, batch {cfg.optim.batch_size}",
    }


def _outcome(outcome) -> dict[str, Any]:
    return {
        "accuracy": outcome.accuracy,
        "train_seconds": outcome.train_seconds,
        "images_per_second": outcome.images_seen / outcome.train_seconds,
    }


# ---------------------------------------------------------------- one method of one task


def run_one(task: str, method: str) -> dict[str, Any]:
    from bench import tutorials

    cifar = {"data": str(cifar10_folder()), "image_size": 32}
    if task == "mnist":
        return _outcome(tutorials.mnist_cnn(*_splits("mnist"))) if method == "tutorial" else _imgclf(data="mnist")
    if task == "fashion":
        if method == "tutorial":
            return _outcome(tutorials.fashion_apparels(*_splits("fashion-mnist")))
        return _imgclf(data="fashion-mnist", **({"budget": 300} if method == "imgclf-long" else {}))
    if task == "cifar10":
        return _outcome(tutorials.cifar_lenet(*_splits(**cifar))) if method == "tutorial" else _imgclf(**cifar)
    if task == "folder":
        return _folder(method)
    if task == "folder-size":
        return _folder_size(method)
    if task == "predict":
        return _predict(method)
    if task == "cifar10-gpu":
        return _gpu_cifar(method, cifar)
    raise SystemExit(f"unknown task {task}")


def _folder(method: str) -> dict[str, Any]:
    from bench import tutorials
    from imgclf.config import DataConfig
    from imgclf.data import load_data

    root = cifar10_folder()
    if method == "tutorial":
        seconds = sum(tutorials.folder_epoch(root / split)[0] for split in ("train", "test"))
        return {"accuracy": None, "train_seconds": seconds, "images_per_second": 60000 / seconds}
    with tempfile.TemporaryDirectory() as cache_dir:
        cfg = DataConfig(data=str(root), image_size=32, data_dir=cache_dir)
        start = time.perf_counter()
        first = load_data(cfg)
        first_seconds = time.perf_counter() - start
        start = time.perf_counter()
        second = load_data(cfg)
        cached_seconds = time.perf_counter() - start
    assert not first.from_cache and second.from_cache and torch.equal(first.train.images, second.train.images)
    n = len(first.train) + len(first.val) + len(first.test)
    return {
        "accuracy": None,
        "train_seconds": first_seconds,
        "images_per_second": n / first_seconds,
        "setup": f"{n} files; later runs load the cache in {cached_seconds:.1f} s",
    }


def _folder_size(method: str) -> dict[str, Any]:
    """One epoch of the folder recipe on the CIFAR-10 JPEGs (32x32) at 0.1's 64 px default or at their own size."""
    with tempfile.TemporaryDirectory() as cache_dir:
        size = {"image_size": 64} if method == "imgclf-0.1" else {}
        result = _imgclf(data=str(cifar10_folder()), epochs=1, data_dir=cache_dir, **size)
    return {**result, "setup": f"{result['setup']}, {64 if size else 'default'} px"}


def _predict(method: str) -> dict[str, Any]:
    from bench import tutorials
    from imgclf.data import channel_stats
    from imgclf.models import create_model
    from imgclf.predict import Classifier
    from imgclf.recipes import RECIPES
    from imgclf.rundir import InferenceSpec

    (train, _), (images, _) = _splits(str(cifar10_folder()), image_size=32)
    mean, std = channel_stats(train)
    widths = next(v for v in RECIPES["cifar10"].cpu if v.name == "default").widths
    model = create_model("cnn", 3, 10, 32, widths=widths).eval()
    if method == "tutorial":
        rate = tutorials.per_image_predict(model, images, mean, std)
        return {"accuracy": None, "train_seconds": len(images) / rate, "images_per_second": rate}
    spec = InferenceSpec("cnn", {"widths": widths}, [str(i) for i in range(10)], 32, 3, mean, std, hflip=True)
    classifier = Classifier(spec, model, torch.device("cpu"))
    classifier.predict_proba(images[:512])  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    classifier.predict_proba(images, batch_size=256)
    seconds = time.perf_counter() - start
    return {
        "accuracy": None,
        "train_seconds": seconds,
        "images_per_second": len(images) / seconds,
        "setup": f"cnn {widths}",
    }


def _gpu_cifar(method: str, cifar: dict[str, Any]) -> dict[str, Any]:
    from bench import tutorials

    if not torch.cuda.is_available():
        raise SystemExit("the gpu suite needs a CUDA GPU; run it through the device tool")
    if method == "tutorial-resnet18":
        return _outcome(tutorials.cifar_resnet18(*_splits(**cifar)))
    if method == "tutorial-cnn4":
        return _outcome(tutorials.cifar_cnn4(*_splits(**cifar)))
    if method == "imgclf-long":
        return _imgclf(target_accuracy=0.934, **cifar)
    runs = [_imgclf(seed=seed, **cifar) for seed in range(5)]
    accuracies = ", ".join(format(r["accuracy"], ".4f") for r in runs)
    return {
        **runs[0],
        "accuracy": statistics.mean(r["accuracy"] for r in runs),
        "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "images_per_second": statistics.mean(r["images_per_second"] for r in runs),
        "setup": f"{runs[0]['setup']}; mean of 5 seeds, accuracies {accuracies}",
    }


# ---------------------------------------------------------------- the suite


def _child(task: str, method: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-m", "bench.run", "--one", task, method, "--json", out.name], env=env)
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}"}
        return json.loads(Path(out.name).read_text())


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=SUITES, default="cpu")
    parser.add_argument("--tasks", nargs="*", help="tasks of the suite to run (default: all)")
    parser.add_argument("--methods", nargs="*", help="methods to run (default: all)")
    parser.add_argument("--one", nargs=2, metavar=("TASK", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(*args.one)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.json).write_text(json.dumps(result))
        return 0
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: no benchmark data; set IMGCLF_SHARED_DATA to the shared data folder")
    suite = SUITES[args.suite]
    rows = [("task", "method", "accuracy", "train s", "images/s", "ratio", "peak MB", "target", "setup")]
    print(f"# {datetime.date.today()} on {machine()}", flush=True)
    for task in args.tasks or list(suite):
        results: dict[str, dict[str, Any]] = {}
        for method, description in suite[task]:
            if args.methods and method not in args.methods and method != suite[task][0][0]:
                continue
            result = results[method] = _child(task, method)
            if "error" in result:
                rows.append((task, method, result["error"], "", "", "", "", "", description))
                continue
            baseline = results.get(suite[task][0][0])  # the task's first method
            tutorial = baseline if baseline is not None and "error" not in baseline else None
            ratio = result["train_seconds"] / tutorial["train_seconds"] if tutorial else None
            target = TARGETS.get((task, method))
            verdict = (
                ""
                if target is None or tutorial is None
                else f"{target[0]}: {'met' if target[1](result, tutorial) else 'MISSED'}"
            )
            compile_note = f"; compile {result['compile_seconds']:.1f} s" if result.get("compile_seconds") else ""
            rows.append(
                (
                    task,
                    method,
                    _fmt(result["accuracy"], ".4f"),
                    _fmt(result["train_seconds"], ".1f"),
                    _fmt(result["images_per_second"], ".0f"),
                    _fmt(ratio, ".2f"),
                    _fmt(result["peak_rss_mb"], ".0f"),
                    verdict,
                    (result.get("setup") or description) + compile_note,
                )
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
    print()
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows[1:]:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
