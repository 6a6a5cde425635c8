"""The studio's two promises, measured: its first page within a second of starting, and 8 pages watching one
live run, each getting every epoch, soon, without slowing the training they watch.

    python -m bench.studio [--clients 8] [--starts 5] [--epochs 400] [--repeats 3]

First page: seconds from starting the process to the first answer of `/`, for `imgclf studio` and, beside it,
for `imgclf serve RUN` (a server that loads a model first) and `python -c "import torch"` (what the studio
leaves out of its start). Live run: a run of --epochs on a small generated folder, started through the API,
watched by --clients event streams (`/api/run/events`) and --clients runs tables (`/api/stream`); a thread
polling events.jsonl every 5 ms notes when each epoch's line appears; each client, when it receives it. The
same run without watchers gives the training seconds the watching costs. Time it alone: a test suite beside
it starves its threads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_class_folder  # noqa: E402  the tests' generated striped-texture folder

CHANGE = {"X-Imgclf-Studio": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_answer(command: list[str], url: str | None, timeout: float = 120) -> float:
    """Seconds from starting ``command`` to its first answer at ``url`` (or to its exit, without one)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if url is None:
            process.wait(timeout)
            return time.perf_counter() - started
        while time.perf_counter() - started < timeout:
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                time.sleep(0.005)
        raise TimeoutError(url)
    finally:
        process.terminate()
        process.wait(30)


def studio_process(folder: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "imgclf", "studio", str(folder), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_up(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url + "/api/runs", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(url)


def watch(url: str, path: str, received: list[tuple[int, float]], done: threading.Event) -> None:
    """One page's event stream of a run: (epoch, when received) for each epoch event, until ``done``."""
    try:
        _watch(url, path, received, done)
    except httpx.TransportError:  # the studio closed the stream as the benchmark ended
        pass


def _watch(url: str, path: str, received: list[tuple[int, float]], done: threading.Event) -> None:
    with httpx.stream("GET", url + path, timeout=None) as answer:
        kind = None
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "train":
                event = json.loads(line[6:])
                if event.get("event") == "epoch":
                    received.append((event["epoch"], time.perf_counter()))
            elif line.startswith("data: ") and kind == "status" and json.loads(line[6:])["state"] != "running":
                break
            if done.is_set():
                break


def appearing(events: Path, seen: dict[int, float], done: threading.Event) -> None:
    """When each epoch's line appears in events.jsonl (the new bytes read every 5 ms)."""
    offset, partial = 0, b""
    while not done.is_set():
        try:
            with open(events, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        *lines, partial = (partial + chunk).split(b"\n")
        now = time.perf_counter()
        for line in lines:
            if b'"event": "epoch"' in line:
                seen.setdefault(json.loads(line)["epoch"], now)
        time.sleep(0.005)


def live_run(folder: Path, url: str, name: str, epochs: int, clients: int) -> dict[str, float]:
    settings = {"data": "stripes", "model": "cnn", "epochs": epochs, "image_size": 16}
    started = httpx.post(url + "/api/train", json={"settings": settings, "name": name}, headers=CHANGE, timeout=30)
    started.raise_for_status()
    run = folder / "runs" / name
    while not (run / "events.jsonl").is_file():
        time.sleep(0.05)
    done = threading.Event()
    seen: dict[int, float] = {}
    threads = [threading.Thread(target=appearing, args=(run / "events.jsonl", seen, done), daemon=True)]
    received: list[list[tuple[int, float]]] = [[] for _ in range(clients)]
    for i in range(clients):
        threads.append(
            threading.Thread(
                target=watch, args=(url, f"/api/run/events?run=runs/{name}", received[i], done), daemon=True
            )
        )
        tables: list[tuple[int, float]] = []
        threads.append(threading.Thread(target=watch, args=(url, "/api/stream", tables, done), daemon=True))
    for thread in threads:
        thread.start()
    while json.loads((run / "status.json").read_text())["state"] == "running":
        time.sleep(0.2)
    time.sleep(1.5)  # the last lines reach the streams
    done.set()
    metrics = json.loads((run / "metrics.json").read_text())
    delays = [when - seen[epoch] for got in received for epoch, when in got if epoch in seen]
    complete = sum(1 for got in received if sorted(e for e, _ in got) == list(range(1, epochs + 1)))
    return {
        "train_seconds": metrics["train_seconds"],
        "clients_complete": complete,
        "delay_median": statistics.median(delays) if delays else float("nan"),
        "delay_p95": statistics.quantiles(delays, n=20)[18] if len(delays) > 20 else float("nan"),
        "delay_max": max(delays) if delays else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs, alone then watched")
    args = parser.parse_args(argv)
    os.environ.setdefault("IMGCLF_SEARCH", "off")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_class_folder(folder / "stripes", per_class=30)
        import imgclf

        served = imgclf.train(data=str(folder / "stripes"), image_size=16, epochs=2, out=str(folder / "runs" / "seed"),
                              verbose=False).run_dir  # fmt: skip
        print("first answer after start, seconds (each median of", args.starts, "cold starts):")
        rows = []
        for what, command, path in (
            ("imgclf studio DIR: GET /", ["-m", "imgclf", "studio", str(folder)], "/"),
            ("imgclf serve RUN: GET /", ["-m", "imgclf", "serve", str(served)], "/"),
            ('python -c "import torch"', ["-c", "import torch"], None),
        ):
            times = []
            for _ in range(args.starts):
                port = free_port()
                flags = ["--port", str(port)] if path else []
                times.append(
                    first_answer([sys.executable, *command, *flags], f"http://127.0.0.1:{port}{path}" if path else None)
                )
            rows.append((what, statistics.median(times), min(times), max(times)))
        print(f"{'what':<30} {'median s':>9} {'min s':>7} {'max s':>7}")
        for what, median, low, high in rows:
            print(f"{what:<30} {median:>9.3f} {low:>7.3f} {high:>7.3f}")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = studio_process(folder, port)
        results = []
        try:
            wait_up(url)
            for i in range(args.repeats):  # alternated: the machine's drift falls on both alike
                alone = live_run(folder, url, f"alone{i}", args.epochs, 0)
                watched = live_run(folder, url, f"watched{i}", args.epochs, args.clients)
                results.append((alone, watched))
        finally:
            process.terminate()
            process.wait(30)
    print(f"\na live run of {args.epochs} epochs (cnn, 16 px, 90 images), {args.clients} run pages + "
          f"{args.clients} runs tables watching (the benchmark's clients on the same 2 cores):")  # fmt: skip
    print(
        f"{'pair':<5} {'alone s':>8} {'watched s':>10} {'ratio':>6} {'complete':>9} {'median s':>9} {'p95 s':>7} {'max s':>7}"
    )
    for i, (alone, watched) in enumerate(results, 1):
        print(
            f"{i:<5} {alone['train_seconds']:>8.1f} {watched['train_seconds']:>10.1f} "
            f"{watched['train_seconds'] / alone['train_seconds']:>6.2f} "
            f"{watched['clients_complete']:>5.0f}/{args.clients:<3} {watched['delay_median']:>9.3f} "
            f"{watched['delay_p95']:>7.3f} {watched['delay_max']:>7.3f}"
        )
    print("complete: run pages that got every epoch; median/p95/max: epoch line written -> on a page")
    return 0


if __name__ == "__main__":
    sys.exit(main())
