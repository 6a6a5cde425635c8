"""Where the decoded images live, measured: in memory, memory-mapped from the decode cache, or streamed from
packed shards, against the tutorials' way (torchvision ImageFolder + DataLoader workers decoding every epoch).

    python -m bench.storage              # CIFAR-10 JPEG folder, 50,000 training images, 2 epochs (about 6 minutes)
    python -m bench.storage --epochs 4

Each imgclf method is one `imgclf train` process (default recipe, `cnn`, 32 px, the same seed) whose peak
anonymous resident memory (RssAnon: what the process holds that is not a file's page cache) is sampled
every 20 ms. The decode cache and the shards are written before the timed runs (their one-off cost is
printed apart). The baseline row times one epoch of ImageFolder batches alone, no model: the ceiling of any
training fed that way on this machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.memory import run_with_peak_anon
from bench.run import DATA, cifar10_folder, machine

METHODS = ("memory", "mmap", "shards")


def _run(command: list[str]) -> tuple[str, float, int]:
    """Run ``command``; its output, seconds and peak RssAnon (bytes)."""
    done, seconds, peak = run_with_peak_anon(command)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr, seconds, peak


def _imgclf(*args: str) -> list[str]:
    return [sys.executable, "-m", "imgclf", *args]


def train(method: str, data: Path, work: Path, epochs: int) -> dict[str, Any]:
    storage = ["--storage", method] if method != "shards" else []
    out = work / f"run-{method}"
    command = _imgclf("train", "--data", str(data), "--epochs", str(epochs), "--data-dir", str(work / "data"))
    output, seconds, peak = _run(command + ["--out", str(out), "--quiet", *storage])
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "method": method,
        "acc": metrics["test"]["accuracy"],
        "seconds": metrics["train_seconds"],
        "images_per_s": metrics["images_per_second"],
        "peak_mb": peak / 2**20,
        "process_s": seconds,
    }


def imagefolder_epoch(folder: Path, batch: int = 512) -> dict[str, Any]:
    """The tutorials' loader: one epoch of ImageFolder batches (PIL decode + ToTensor + Normalize in workers)."""
    code = f"""
import time, torch, torchvision.transforms as T
from torchvision.datasets import ImageFolder
data = ImageFolder({str(folder / "train")!r}, T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))
loader = torch.utils.data.DataLoader(data, batch_size={batch}, shuffle=True, num_workers=2)
start = time.perf_counter(); n = sum(len(y) for _, y in loader)
print("IMAGES", n, time.perf_counter() - start)
"""
    output, _, peak = _run([sys.executable, "-c", code])
    images, seconds = re.search(r"IMAGES (\d+) ([\d.]+)", output).groups()  # type: ignore[union-attr]
    return {
        "method": "ImageFolder loader alone",
        "acc": None,
        "seconds": float(seconds),
        "images_per_s": int(images) / float(seconds),
        "peak_mb": peak / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    folder = cifar10_folder()
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        work = Path(tmp)
        start = time.perf_counter()  # one-off costs: the decode cache, then the shards
        _run(
            _imgclf(
                "train",
                "--data",
                str(folder),
                "--epochs",
                "1",
                "--data-dir",
                str(work / "data"),
                "--out",
                str(work / "warm"),
                "--quiet",
                "--storage",
                "mmap",
            )
        )
        warm = time.perf_counter() - start
        pack_out, pack_seconds, _ = _run(_imgclf("pack", str(folder), "--out", str(work / "shards")))
        shard_mb = sum(f.stat().st_size for f in (work / "shards").iterdir()) / 2**20
        cache_mb = sum(f.stat().st_size for f in (work / "data" / "cache").glob("*.u8")) / 2**20
        rows = [train(m, work / "shards" if m == "shards" else folder, work, args.epochs) for m in METHODS]
        rows.append(imagefolder_epoch(folder))
    print(f"\nbench.storage  {datetime.date.today()}  {machine()}  CIFAR-10 JPEG folder, {args.epochs} epochs of cnn")
    print(
        f"one-off: decode cache {cache_mb:,.0f} MB (first run incl. 1 epoch {warm:.0f} s); "
        f"pack {shard_mb:,.0f} MB of PNG shards in {pack_seconds:.0f} s"
    )
    print(f"{'method':<26}{'test acc':>9}{'train s':>9}{'images/s':>10}{'peak anon MB':>14}{'vs memory':>11}")
    base = rows[0]["images_per_s"]
    for row in rows:
        acc = "-" if row["acc"] is None else f"{row['acc']:.4f}"
        print(
            f"{row['method']:<26}{acc:>9}{row['seconds']:>9.1f}{row['images_per_s']:>10.0f}"
            f"{row['peak_mb']:>14.0f}{row['images_per_s'] / base:>10.2f}x"
        )
    for row in rows:
        name = row["method"].split()[0].lower()
        print(f"RESULT method={name} images_per_s={row['images_per_s']:.0f} peak_anon_mb={row['peak_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
