"""The studio's page in real Chromium against a real ``imgclf studio`` (training in its child processes): the runs
table and a run's curves growing live, stop and resume from the page, comparing two runs, reviewing the doctor's
findings and excluding an image, trying a model on an upload and on the webcam (Chromium's fake camera), and
making a two-class dataset from uploads and the webcam, then training on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serve import listening

from conftest import CHROMIUM, CHROMIUM_FLAGS, synthetic_image, write_class_folder

CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # a test pattern as the webcam
SLOW = 120_000  # ms: a child process imports PyTorch and reads the data before its first epoch


@pytest.fixture(scope="module")
def studio(tmp_path_factory, trained_run) -> Iterator[tuple[str, Path]]:
    if CHROMIUM is None:
        assert not os.environ.get("IMGCLF_REQUIRE_CHROMIUM"), "CI must install Chromium (see .ci/run)"
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    folder = tmp_path_factory.mktemp("studio")
    write_class_folder(folder / "stripes", per_class=12)
    for name in ("a", "b"):
        shutil.copytree(trained_run, folder / "runs" / name)
    with listening(["studio", str(folder)], "/api/runs") as (url, _):
        yield url, folder
    subprocess.run(["pkill", "-f", str(folder)], check=False)  # training it started outlives it: end it here


@pytest.fixture
def page(studio):
    from playwright.sync_api import sync_playwright

    url, _ = studio
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:] + CAMERA)
        context = browser.new_context(viewport={"width": 1200, "height": 900}, permissions=["camera"])
        tab = context.new_page()
        requested: list[str] = []
        tab.on("request", lambda request: requested.append(request.url))
        tab.base = url  # type: ignore[attr-defined]
        yield tab
        assert all(u.startswith((url, "data:", "blob:")) for u in requested), requested  # nothing off this machine
        browser.close()


def go(page, where: str) -> None:
    page.goto(page.base + "/" + where)


def state_of(page, selector: str, state: str) -> None:
    page.wait_for_function(
        "([s, want]) => document.querySelector(s)?.textContent === want", arg=[selector, state], timeout=SLOW
    )


def start_training(page, name: str, epochs: int) -> None:
    """Fill the training form's model, epochs, size and run name, start, and wait for the run's page."""
    page.fill("input[name=model]", "cnn")
    page.fill("input[name=epochs]", str(epochs))
    page.fill("input[name=image_size]", "16")
    page.fill("#run-name", name)
    page.click("#start")
    page.wait_for_function(f"location.hash === '#/run/runs%2F{name}'", timeout=SLOW)


def points(page, chart: str, series: str) -> int:
    found = page.locator(f"#{chart} polyline[data-series='{series}']")
    return int(found.get_attribute("data-points") or 0) if found.count() else 0


def test_runs_live_curves_stop_and_resume(studio, page, tmp_path):
    _, folder = studio
    watcher = page.context.new_page()  # the runs table in another tab, never reloaded
    watcher.goto(page.base + "/")
    watcher.wait_for_selector("#runs tr[data-run='runs/a']")
    assert watcher.locator("#runs tr[data-run='runs/a'] .state").text_content() == "finished"
    assert watcher.locator("#runs tr[data-run]").count() == 2

    go(page, "#/new")
    page.wait_for_selector("#train-form select[name=data] option[value=stripes]", state="attached")
    page.select_option("select[name=data]", "stripes")
    start_training(page, "live", epochs=3000)
    state_of(page, "#run-state", "running")
    page.wait_for_function(
        "document.querySelector(\"#curve-loss polyline[data-series='val loss']\")?.dataset.points >= 3", timeout=SLOW
    )
    seen = points(page, "curve-loss", "val loss")
    page.wait_for_function(  # drawn as the epochs arrive, with no reload
        f"document.querySelector(\"#curve-loss polyline[data-series='val loss']\").dataset.points > {seen}"
    )
    state_of(watcher, "#runs tr[data-run='runs/live'] .state", "running")  # the other tab saw it start

    page.click("#stop")
    state_of(page, "#run-state", "stopped")
    state_of(watcher, "#runs tr[data-run='runs/live'] .state", "stopped")
    stopped = len([line for line in (folder / "runs/live/history.csv").read_text().splitlines()[1:] if line])
    page.screenshot(path=str(tmp_path / "run.png"), full_page=True)

    page.click("#resume")
    state_of(page, "#run-state", "running")
    page.wait_for_function(
        f"document.querySelector(\"#curve-loss polyline[data-series='val loss']\")?.dataset.points > {stopped + 2}",
        timeout=SLOW,
    )
    assert (tmp_path / "run.png").stat().st_size > 20_000  # (the resumed run is ended with the studio's folder)


SEARCH = {  # search.json as the folder default writes it (shortened)
    "metric": "accuracy",
    "chosen": "lite0",
    "reason": "lite0's probe at 64 px (0.9500) beat the cnn (0.6667)",
    "sure": "clear: +0.2833 over the cnn (5.1 standard errors)",
    "trials": [
        {"candidate": "lite0 probe", "image_size": 64, "score": 0.95, "seconds": 0.1, "how": "linear probe"},
        {"candidate": "cnn", "image_size": 16, "score": 0.6667, "seconds": 0.2, "how": "3 epochs"},
    ],
}


def test_compare_two_runs_and_read_one_s_search(studio, page):
    _, folder = studio
    (folder / "runs" / "b" / "search.json").write_text(json.dumps(SEARCH))
    go(page, "")
    page.wait_for_selector("#runs tr[data-run='runs/b']")
    page.check("#runs tr[data-run='runs/a'] .pick")
    page.check("#runs tr[data-run='runs/b'] .pick")
    page.click("#compare")
    page.wait_for_selector("#compare-table")
    assert page.locator("#compare-table tr").count() == 3  # a header and the two runs
    assert page.locator("#compare-acc polyline").count() == 2  # their validation curves overlaid
    page.click("#compare-table a:text('runs/b')")
    page.wait_for_selector("#search")
    assert page.locator("#search tr").count() == 3 and "beat the cnn" in page.text_content("main")
    page.click("text=Config, with where each value came from")
    assert page.locator("#config tr").count() > 40  # every setting, with its source


@pytest.mark.slow  # the real doctor in a child (15 s in CI): test_studio.py reviews written findings in every run
def test_review_the_doctors_findings_and_exclude_an_image(studio, page):
    _, folder = studio
    data = write_class_folder(folder / "dup", per_class=12, seed=3)
    shutil.copy(data / "checker" / "000.png", data / "horizontal" / "copy.png")  # one image under two labels
    go(page, "#/data/dup")
    page.click("#run-doctor")
    page.wait_for_selector(".item[data-path='dup/horizontal/copy.png']", timeout=SLOW)
    item = page.locator(".item[data-path='dup/horizontal/copy.png']")
    assert "duplicate" in item.text_content()
    item.locator(".exclude").click()
    page.wait_for_function("document.getElementById('review-summary').textContent.startsWith('1 excluded')")
    exclude = folder / ".imgclf-studio/data/dup/doctor/exclude.txt"
    assert exclude.read_text() == f"{data / 'horizontal' / 'copy.png'}\n"
    assert (data / "horizontal" / "copy.png").is_file()  # decided, not deleted
    page.click("#undo")
    page.wait_for_function("document.getElementById('review-summary')?.textContent.startsWith('0 excluded')")
    assert exclude.read_text() == ""
    page.locator(".item[data-path='dup/horizontal/copy.png'] .exclude").click()
    page.wait_for_selector("#train-without:not([hidden])")
    page.click("#train-without")
    page.wait_for_selector("#train-form input[name=exclude]")
    assert page.input_value("input[name=exclude]") == ".imgclf-studio/data/dup/doctor/exclude.txt"
    assert page.input_value("select[name=data]") == "dup"


def png_file(path: Path, cls: int, seed: int, size: int = 32) -> Path:
    Image.fromarray(synthetic_image(cls, np.random.default_rng(seed), size)).save(path)
    return path


def test_try_a_model_on_an_upload_and_on_the_webcam(page, tmp_path):
    go(page, "#/try/runs%2Fa")
    page.set_input_files("#try-file", str(png_file(tmp_path / "stripes.png", 0, 1)))
    page.wait_for_selector("#try-bars li", timeout=SLOW)
    assert page.locator("#try-bars li").count() == 3  # every class of the 3-class model
    page.wait_for_function("document.getElementById('try-overlay').naturalWidth > 0")
    # the first answer comes before the training images are embedded; the page asks again until they are
    page.wait_for_function("document.querySelectorAll('#try-nearest img').length === 6", timeout=SLOW)
    assert "not measured" in page.text_content("#try-unknown")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    page.set_input_files("#try-file", str(bad))
    page.wait_for_selector("#try-status.error")
    assert "notes.png" in page.text_content("#try-status")
    page.click("#webcam-start")
    page.wait_for_function("document.getElementById('webcam').videoWidth > 0")
    page.click("#webcam-shot")
    page.wait_for_selector("#try-bars li")
    assert page.locator("#try-bars li").count() == 3


def test_make_a_dataset_from_uploads_and_the_webcam_then_train(studio, page, tmp_path):
    _, folder = studio
    go(page, "#/data")
    page.fill("#make-name", "shapes")
    page.fill("#make-classes", "lines, checks")
    page.click("#make-create")
    page.wait_for_function("location.hash === '#/data/shapes'")
    for name, cls in (("lines", 0), ("checks", 2)):
        images = [str(png_file(tmp_path / f"{name}{i}.png", cls, 100 * cls + i)) for i in range(12)]
        page.set_input_files(f".class-box[data-class='{name}'] .add-files", images)
        page.wait_for_function(
            "n => document.querySelector(`.class-box[data-class='${n}'] .count`).textContent === '12'", arg=name
        )
    page.click("#webcam-start")
    page.wait_for_function("document.getElementById('webcam').videoWidth > 0")
    page.click(".class-box[data-class='checks'] .add-webcam")
    page.wait_for_function("document.querySelector(`.class-box[data-class='checks'] .count`).textContent === '13'")
    assert len(list((folder / "shapes" / "checks").iterdir())) == 13
    page.click("text=Train on it")
    page.wait_for_selector("#train-form")
    assert page.input_value("select[name=data]") == "shapes"
    start_training(page, "shapes-first", epochs=3)
    state_of(page, "#run-state", "finished")
    page.wait_for_selector("#test-metrics", timeout=SLOW)
    assert (folder / "runs" / "shapes-first" / "best.pt").is_file()
