"""Shipping a model, measured: prediction throughput (PyTorch eager, ONNX Runtime, the tutorials' per-image
PIL path) against this CPU's measured matrix-multiply peak, batch prediction of a folder (speed and peak
memory), and the server under load (8 clients on loopback, batched and unbatched).

    python -m bench.ship                  # everything (about 4 minutes on 2 cores)
    python -m bench.ship --skip-server    # throughput and folders only
    python -m bench.ship --seconds 10     # a shorter load test
    python -m bench.ship --only-throughput  # the model throughput table (with and without test-time augmentation)

The networks are the CPU recipes' default ``cnn`` (widths from imgclf.recipes) with random weights: the
speed of a forward pass does not depend on what the weights learned. Data: the CIFAR-10 JPEG copy and
MNIST from ../shared/data (see bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import tutorials
from bench.run import REPO, _splits, cifar10_folder, machine

LOAD_CLIENTS = 8
BAD_SHARE = 0.1  # of the load test's uploads: the generated bad-image corpus
BATCH = 256


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
    """Multiply-adds per second of a large fp32 torch.mm: what this CPU can do at best (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def recipe_classifier(task: str, train_images: torch.Tensor, model_name: str = "cnn"):
    from imgclf.data import channel_stats
    from imgclf.models import create_model
    from imgclf.predict import Classifier
    from imgclf.recipes import RECIPES
    from imgclf.rundir import InferenceSpec

    args = {"widths": next(v for v in RECIPES[task].cpu if v.name == "default").widths} if model_name == "cnn" else {}
    channels, size = train_images.shape[1], train_images.shape[-1]
    mean, std = channel_stats(train_images)
    torch.manual_seed(0)
    model = create_model(model_name, channels, 10, size, **args).eval()
    spec = InferenceSpec(model_name, args, [str(i) for i in range(10)], size, channels, mean, std)
    return Classifier(spec, model, torch.device("cpu"))


def macs_per_image(classifier) -> int:
    from imgclf.explain.inspect import inspect_model

    return sum(layer.macs for layer in inspect_model(classifier.model, classifier.channels, classifier.image_size))


def throughput(task: str, peak: float) -> list[dict[str, Any]]:
    from imgclf.export import OnnxBackend, export_classifier

    (train, _), (images, _) = _splits(str(cifar10_folder()) if task == "cifar10" else task, image_size=None)
    classifier = recipe_classifier(task, train)
    macs = macs_per_image(classifier)
    rows = []
    rate = tutorials.per_image_predict(classifier.model, images, classifier.spec.mean, classifier.spec.std)
    rows.append({"method": "tutorial (PIL per image, DataLoader)", "images_per_second": rate})
    classifier.predict_proba(images[:512])  # warm-up: oneDNN picks its kernels on the first call
    seconds = _timed(lambda: classifier.predict_proba(images, BATCH))
    reference = classifier.predict_proba(images, BATCH)
    rows.append({"method": "imgclf, PyTorch eager", "images_per_second": len(images) / seconds, "agree": 1.0})
    with tempfile.TemporaryDirectory() as folder:
        classifier.backend = OnnxBackend(export_classifier(classifier, "onnx", folder).path)
        classifier.predict_proba(images[:512])
        seconds = _timed(lambda: classifier.predict_proba(images, BATCH))
        agree = float((classifier.predict_proba(images, BATCH).argmax(1) == reference.argmax(1)).float().mean())
        classifier.backend = None
    rows.append({"method": "imgclf, ONNX Runtime", "images_per_second": len(images) / seconds, "agree": agree})
    rows += with_tta(classifier, images, task == "cifar10")
    for row in rows:
        macs_done = macs * row.get("views", 1)
        row.update(
            task=task, images=len(images), macs=macs_done, peak_share=row["images_per_second"] * macs_done / peak
        )
    return rows


def with_tta(plain, images: torch.Tensor, hflip: bool) -> list[dict[str, Any]]:
    """The same network as a run whose recipe uses test-time augmentation (the cnn's): predict, serve and
    export then average its views everywhere (the image, and its mirror where that keeps the label, and two
    1-pixel shifts): what that costs a user, eager and exported."""
    import dataclasses

    from imgclf.export import OnnxBackend, export_classifier
    from imgclf.predict import Classifier

    spec = dataclasses.replace(plain.spec, tta=True, hflip=hflip)
    classifier = Classifier(spec, plain.model, torch.device("cpu"))
    views = 6 if hflip else 3
    classifier.predict_proba(images[:512])
    seconds = _timed(lambda: classifier.predict_proba(images, BATCH))
    reference = classifier.predict_proba(images, BATCH)
    rows = [{"method": f"imgclf, PyTorch eager, with TTA ({views} views)", "images_per_second": len(images) / seconds}]
    with tempfile.TemporaryDirectory() as folder:
        classifier.backend = OnnxBackend(export_classifier(classifier, "onnx", folder).path)
        classifier.predict_proba(images[:512])
        seconds = _timed(lambda: classifier.predict_proba(images, BATCH))
        agree = float((classifier.predict_proba(images, BATCH).argmax(1) == reference.argmax(1)).float().mean())
    rows.append(
        {"method": f"imgclf, ONNX Runtime, with TTA ({views} views)", "images_per_second": len(images) / seconds}
    )
    rows[-1]["agree"] = agree
    for row in rows:  # multiply-adds an image: every view's
        row["views"] = views
    return rows


# ---------------------------------------------------------------- a folder, streamed


def write_run(task: str, folder: Path, model_name: str = "cnn") -> Path:
    """A run directory holding only best.pt: the recipe's network (or ``model_name``) with random weights."""
    from imgclf.rundir import BEST, Checkpoint, save_checkpoint

    (train, _), _ = _splits(str(cifar10_folder()) if task == "cifar10" else task, image_size=None)
    classifier = recipe_classifier(task, train, model_name)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / BEST, Checkpoint(classifier.spec, classifier.model.state_dict()))
    return folder


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent (this bench, holding CIFAR-10)
PEAK_MEMORY = (
    "import sys; from imgclf.cli import main; code = main(sys.argv[1:]); "
    "print('maxrss', next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1], file=sys.stderr); "
    "sys.exit(code)"
)


def predict_folder(run: Path, images: Path, backend: str) -> dict[str, Any]:
    """``imgclf predict RUN FOLDER --out x.csv`` in a process of its own: seconds and peak resident memory."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["predict", str(run), str(images), "--out", f"{out}/p.csv", "--backend", backend]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, *argv], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        rows = sum(1 for _ in open(f"{out}/p.csv")) - 1
    peak_kb = int(next(line for line in done.stderr.splitlines() if line.startswith("maxrss")).split()[1])
    return {"images": rows, "seconds": seconds, "images_per_second": rows / seconds, "peak_mb": peak_kb / 1024}


# ---------------------------------------------------------------- the server under load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(url: str, good: list[bytes], bad: list[bytes], until: float, rng: random.Random, log: dict) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        while time.perf_counter() < until:
            is_bad = rng.random() < BAD_SHARE
            data = rng.choice(bad if is_bad else good)
            start = time.perf_counter()
            try:
                answer = await client.post(url, files=[("files", ("upload.jpg", data, "image/jpeg"))])
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            latency = time.perf_counter() - start
            if is_bad:
                log["bad"].append(status)
            else:
                log["good"].append((status, latency))


def load_test(run: Path, max_batch: int, seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from bad_images import UNUSABLE

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imgclf", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/health")
        good = [p.read_bytes() for p in sorted((cifar10_folder() / "test").rglob("*.jpg"))[:500]]
        log: dict[str, list] = {"good": [], "bad": []}
        until = time.perf_counter() + seconds
        rng = random.Random(0)
        clients = [
            _client(base + "/predict", good, list(UNUSABLE.values()), until, random.Random(rng.random()), log)
            for _ in range(LOAD_CLIENTS)
        ]

        async def everyone() -> None:
            await asyncio.gather(*clients)

        asyncio.run(everyone())
        import httpx

        health = httpx.get(base + "/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = sorted(latency for status, latency in log["good"] if status == 200)
    return {
        "requests_per_second": (len(log["good"]) + len(log["bad"])) / seconds,
        "images_per_second": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "good": len(log["good"]),
        "failed_good": sum(status != 200 for status, _ in log["good"]),
        "bad": len(log["bad"]),
        "bad_not_4xx": sum(not 400 <= status < 500 for status in log["bad"]),
        "images_per_forward_pass": health["images"] / max(1, health["batches"]),
    }


def _wait_for(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


# ---------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of each load test")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--only-server", action="store_true", help="the load tests alone")
    parser.add_argument("--only-throughput", action="store_true", help="the model throughput table alone")
    args = parser.parse_args(argv)
    print(f"# {datetime.date.today()}, {machine()}, {torch.get_num_threads()} torch threads")
    peaks = [matmul_peak()]
    rows = [] if args.only_server else throughput("cifar10", 1.0) + throughput("mnist", 1.0)
    peaks.append(matmul_peak())  # measured before and after: a busy neighbour lowers one of them, not the best
    peak = max(peaks)
    print(
        f"matmul peak (fp32 torch.mm 2048, best of 40): {peak / 1e9:.1f} G multiply-adds/s "
        f"(before/after: {', '.join(f'{p / 1e9:.1f}' for p in peaks)})\n"
    )
    for row in rows:
        row["peak_share"] /= peak
    print("| task | method | images | images/s | x tutorial | MACs/image | share of matmul peak | same labels |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["task"] == row["task"])["images_per_second"]
        print(
            f"| {row['task']} | {row['method']} | {row['images']:,} | {row['images_per_second']:,.0f} | "
            f"{row['images_per_second'] / base:.1f} | {row['macs'] / 1e6:.1f} M | {100 * row['peak_share']:.1f}% | "
            f"{row.get('agree', '-')} |"
        )
        print(f'RESULT task={row["task"]} method="{row["method"]}" images_per_second={row["images_per_second"]:.0f}')
    if args.only_throughput:
        return 0

    with tempfile.TemporaryDirectory() as folder:
        run = write_run("cifar10", Path(folder))
        from imgclf.export import export

        export(run, "onnx")  # once, before the timed runs: --backend onnx exports on first use
        print("\n| folder | backend | images | seconds | images/s | peak memory |")
        print("|---|---|---|---|---|---|")
        for split in () if args.only_server else ("test", "train"):
            for backend in ("torch", "onnx"):
                result = predict_folder(run, cifar10_folder() / split, backend)
                print(
                    f"| CIFAR-10 JPEG {split}/ | {backend} | {result['images']:,} | {result['seconds']:.1f} | "
                    f"{result['images_per_second']:,.0f} | {result['peak_mb']:,.0f} MB |"
                )
        if not args.skip_server:
            print(
                f"\n| server ({LOAD_CLIENTS} clients, {args.seconds:.0f} s, {100 * BAD_SHARE:.0f}% bad uploads) | "
                "requests/s | good images/s | p50 ms | p99 ms | failed good | bad not 4xx | images per pass |"
            )
            print("|---|---|---|---|---|---|---|---|")
            resnet = write_run("cifar10", Path(folder) / "resnet18", "resnet18")
            servers = [("unbatched (--max-batch 1)", 1), ("batched (--max-batch 64)", 64)]
            for model_name, model_run in (("cnn", run), ("resnet18", resnet)):
                for name, max_batch in servers * 2:  # alternating rounds: this machine's speed drifts
                    r = load_test(model_run, max_batch, args.seconds)
                    print(
                        f"| {model_name}, {name} | {r['requests_per_second']:.0f} | {r['images_per_second']:.0f} | {r['p50_ms']:.1f} | "
                        f"{r['p99_ms']:.1f} | {r['failed_good']} of {r['good']} | {r['bad_not_4xx']} of {r['bad']} | "
                        f"{r['images_per_forward_pass']:.1f} |"
                    )
                    result = json.dumps(r, separators=(",", ":"))
                    print(f"RESULT server={model_name}-{name.split()[0]} {result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
