"""Every export format against eager PyTorch, on real runs: a cnn trained on CIFAR-10 and lite0 fine-tuned on a
100-images-per-class CIFAR-10 folder at 96 px. For each format: file size, test accuracy, answers shared with
PyTorch, images/s at batch 1 and 32 (``imgclf benchmark``), and the share of this CPU's measured fp32 matmul
peak those images/s reach (the model's multiply-adds per image x images/s / peak).

    python -m bench.formats [--epochs 2] [--reuse]

Time it alone: a test suite beside it starves its threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imgclf
from bench.ship import macs_per_image, matmul_peak

DATA = Path(__file__).resolve().parents[1] / ".data"


TASKS = {"CIFAR-10 cnn": "cnn", "CIFAR-10 100/class lite0 96 px": "lite0"}  # the runs' folders under --out


def runs(epochs: int, out: Path, reuse: bool) -> dict[str, Path]:
    if reuse and all((out / folder / "best.pt").is_file() for folder in TASKS.values()):
        return {task: out / folder for task, folder in TASKS.items()}  # formats measured again, training not
    common = {"search": "off", "epochs": epochs, "verbose": False}
    made = {}
    started = time.perf_counter()
    made["CIFAR-10 cnn"] = imgclf.train(
        data=str(DATA / "cifar10" / "train"), model="cnn", out=str(out / "cnn"), **common
    ).run_dir
    print(f"trained the cnn in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    made["CIFAR-10 100/class lite0 96 px"] = imgclf.train(
        data=str(DATA / "cifar10-100-per-class" / "train"),
        model="lite0",
        image_size=96,
        out=str(out / "lite0"),
        **common,
    ).run_dir
    print(f"fine-tuned lite0 in {time.perf_counter() - started:.0f} s", flush=True)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=str(DATA / "formats-runs"))
    parser.add_argument("--reuse", action="store_true", help="benchmark the runs already in --out, if both are there")
    args = parser.parse_args(argv)
    peak = max(matmul_peak(), matmul_peak())
    print(f"matmul peak (fp32 torch.mm 2048, best of 40): {peak / 1e9:.1f} G multiply-adds/s", flush=True)
    table = []
    for task, run in runs(args.epochs, Path(args.out), args.reuse).items():
        macs = macs_per_image(imgclf.load(run, device="cpu"))
        for row in imgclf.benchmark(run, log=lambda _: None):
            table.append((task, row, macs))
    print(
        "\n| task | format | MB | test accuracy | same answer as PyTorch | images/s b1 | images/s b32 | x PyTorch b32 "
        "| share of matmul peak b32 | start s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    eager: dict[str, float] = {}
    for task, row, macs in table:
        if not row.images_per_second:
            print(f"| {task} | {row.format} | - | - | - | - | - | - | - | {row.note[:80]} |")
            continue
        b1, b32 = row.images_per_second[1], row.images_per_second[32]
        eager.setdefault(task, b32)
        print(
            f"| {task} | {row.format} | {row.file_mb:.1f} | {row.accuracy:.4f} | {row.agreement:.2%} | {b1:,.0f} | "
            f"{b32:,.0f} | {b32 / eager[task]:.2f} | {100 * b32 * macs / peak:.1f}% | {row.startup_seconds:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
