"""The README's studio screenshots, taken again: a studio over a folder with three CIFAR-10 classes (100 photos
each, from ../shared/data's CIFAR-10 as bench/ unpacks it), two finished runs and one training, the doctor's
findings, a try and a dataset being made; headless Chromium with a fake camera.

    python docs/studio_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

CIFAR = ROOT / ".data" / "cifar10-100-per-class" / "train"
CHANGE = {"X-Imgclf-Studio": "1"}
CLASSES = ("cat", "dog", "ship")


def wait(check, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--port", type=int, default=8577)
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "my-project"
        for name in CLASSES:
            shutil.copytree(CIFAR / name, folder / "pets" / name)
        url = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen([sys.executable, "-m", "imgclf", "studio", str(folder), "--port", str(args.port)])
        try:
            wait(lambda: _up(url), 60)
            client = httpx.Client(base_url=url, headers=CHANGE, timeout=60)
            common = {"data": "pets", "model": "cnn", "image_size": 32}
            for name, extra in (
                ("pets-cnn", {"epochs": 30}),
                ("pets-cnn-no-augment", {"epochs": 30, "augment": "none"}),
            ):
                client.post("/api/train", json={"settings": {**common, **extra}, "name": name}).raise_for_status()
                wait(lambda n=name: _state(client, f"runs/{n}") == "finished")
            client.post("/api/data/doctor", json={"data": "pets"}).raise_for_status()
            wait(lambda: client.get("/api/data/review", params={"data": "pets"}).json()["checked"])
            client.post("/api/train", json={"settings": {**common, "epochs": 400}, "name": "pets-cnn-long"})
            wait(lambda: len(client.get("/api/run", params={"run": "runs/pets-cnn-long"}).json()["history"]) >= 25
                 if _state(client, "runs/pets-cnn-long") else False)  # fmt: skip
            shots(url, folder, out)
            client.post("/api/run/stop", json={"run": "runs/pets-cnn-long"})
        finally:
            server.terminate()
            server.wait(30)
            subprocess.run(["pkill", "-f", str(folder)], check=False)
    return 0


def _up(url: str) -> bool:
    try:
        httpx.get(url + "/api/runs", timeout=1)
        return True
    except httpx.TransportError:
        return False


def _state(client: httpx.Client, run: str) -> str | None:
    runs = {r["path"]: r["state"] for r in client.get("/api/runs").json()["runs"]}
    return runs.get(run)


def shots(url: str, folder: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:] + camera)
        page = browser.new_page(viewport={"width": 1100, "height": 760})

        def shot(name: str, full: bool = False, height: int = 760) -> None:
            page.wait_for_timeout(800)
            page.set_viewport_size({"width": 1100, "height": height})
            page.screenshot(path=str(out / f"studio-{name}.png"), full_page=full)
            page.set_viewport_size({"width": 1100, "height": 760})

        page.goto(url + "/")
        page.wait_for_selector("#runs tr[data-run='runs/pets-cnn']")
        page.check("#runs tr[data-run='runs/pets-cnn'] .pick")
        page.check("#runs tr[data-run='runs/pets-cnn-no-augment'] .pick")
        shot("runs", height=340)
        page.click("#compare")
        page.wait_for_selector("#compare-table")
        shot("compare", height=520)
        page.goto(url + "/#/run/runs%2Fpets-cnn-long")
        page.wait_for_selector("#curve-loss polyline")
        shot("run")
        page.goto(url + "/#/new?data=pets")
        page.wait_for_selector("#train-form")
        shot("train")
        page.goto(url + "/#/data/pets")
        page.wait_for_selector("#review-summary")
        items = page.locator(".item")
        if items.count():
            items.nth(0).locator(".exclude").click()
        if items.count() > 1:
            items.nth(1).locator(".relabel").click()
        page.evaluate("document.getElementById('doctor').scrollIntoView()")
        shot("doctor")
        page.goto(url + "/#/try/runs%2Fpets-cnn")
        page.set_input_files("#try-file", str(CIFAR.parent / "test" / "cat" / "0003.jpg"))  # never trained on
        page.wait_for_selector("#try-nearest img")
        shot("try", full=True)
        page.goto(url + "/#/data")
        page.fill("#make-name", "mugs")
        page.fill("#make-classes", "mine, yours")
        page.click("#make-create")
        page.wait_for_selector(".class-box")
        page.click("#webcam-start")
        page.wait_for_function("document.getElementById('webcam').videoWidth > 0")
        page.click(".class-box[data-class='mine'] .add-webcam")
        page.wait_for_function("document.querySelector(`.class-box[data-class='mine'] .count`).textContent === '1'")
        shot("make")
        browser.close()
    print(json.dumps(sorted(p.name for p in out.glob("studio-*.png"))))


if __name__ == "__main__":
    sys.exit(main())
