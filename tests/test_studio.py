"""The studio: its API over a folder of runs and data (what the page uses), the guards (no path outside the
folder, the token, cross-site requests refused, upload limits, bad images), the doctor review's fix lists and
their undo, trying a model, the studio's process free of training code, and training started, stopped, resumed
and dying in child processes. The page itself is driven in Chromium in test_studio_page.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bad_images import UNUSABLE
from conftest import write_class_folder
from imgclf.config import settings_fields
from imgclf.studio.app import create_app
from imgclf.studio.review import Review
from imgclf.studio.settings import StudioSettings
from imgclf.studio.workspace import Workspace

CHANGE = {"X-Imgclf-Studio": "1"}  # what the page sends with every request that changes something
LOCAL = "http://127.0.0.1:8500"


def png(seed: int = 0, size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def make_folder(root: Path, trained_run: Path) -> Path:
    """A studio folder: a data folder (stripes) and two copies of a finished run under runs/."""
    write_class_folder(root / "stripes", per_class=12)
    for name in ("a", "b"):
        shutil.copytree(trained_run, root / "runs" / name)
    return root


@pytest.fixture
def folder(tmp_path, trained_run) -> Path:
    return make_folder(tmp_path / "studio", trained_run)


@pytest.fixture
def client(folder):
    with TestClient(create_app(folder), base_url=LOCAL) as test_client:
        yield test_client


def wait_for(check, seconds: float = 120, every: float = 0.3):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {seconds} s")


def test_the_runs_and_a_run_as_training_wrote_them(client, trained_run):
    runs = client.get("/api/runs").json()["runs"]
    assert {r["path"] for r in runs} == {"runs/a", "runs/b"}
    tested = json.loads((trained_run / "metrics.json").read_text())["test"]["accuracy"]
    assert all(r["state"] == "finished" and r["accuracy"] == pytest.approx(tested) for r in runs)
    run = client.get("/api/run", params={"run": "runs/a"}).json()
    epochs = [row["epoch"] for row in run["history"]]
    assert epochs == list(range(1, len(epochs) + 1)) and epochs  # every epoch, once, in order
    assert run["test"]["accuracy"] == pytest.approx(tested)
    config = {row["name"]: row for row in run["config"]}
    assert config["image_size"]["value"] == 16 and config["image_size"]["source"] == "you"
    assert config["lr"]["source"].startswith(("recipe", "rule"))  # each value says where it came from
    assert any(p.endswith("confusion_matrix.png") for p in run["plots"])
    assert client.get("/api/file", params={"path": run["plots"][0]}).headers["content-type"] == "image/png"
    both = client.get("/api/compare", params=[("run", "runs/a"), ("run", "runs/b")]).json()["runs"]
    assert [r["run"]["path"] for r in both] == ["runs/a", "runs/b"] and both[0]["history"] == both[1]["history"]


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/passwd", "runs/../../outside.txt", "stripes/../../outside.txt", "link/passwd"]
)
def test_no_request_reads_outside_the_folder(folder, client, path):
    (folder.parent / "outside.txt").write_text("secret")
    (folder / "link").symlink_to("/etc")  # a link inside the folder pointing out of it
    for url, params in (
        ("/api/file", {"path": path}),
        ("/api/run", {"run": path}),
        ("/api/data/review", {"data": path}),
    ):
        answer = client.get(url, params=params)
        assert answer.status_code == 404, (url, path)
        assert "secret" not in answer.text and "root:" not in answer.text


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "x" * 80, "..", ""])
def test_no_request_writes_outside_the_folder(folder, client, name):
    before = set(folder.parent.iterdir())
    made = client.post("/api/data", json={"name": name, "classes": ["p", "q"]}, headers=CHANGE)
    assert made.status_code == 422 and "dataset name" in made.json()["error"]
    added = client.post(
        "/api/data/images", params={"data": "stripes", "label": name}, files={"files": ("x.png", png())}, headers=CHANGE
    )
    assert added.status_code in (404, 422)
    upward = client.post(
        "/api/data/images", params={"data": "..", "label": "x"}, files={"files": ("x.png", png())}, headers=CHANGE
    )
    assert upward.status_code == 404
    assert set(folder.parent.iterdir()) == before


def test_a_token_is_needed_on_every_request_when_set(folder):
    app = create_app(folder, StudioSettings(token="s3cret-token"), loopback_only=False)
    with TestClient(app, base_url="http://192.0.2.7:8500") as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        opened = client.get("/?token=s3cret-token", follow_redirects=False)  # the link the studio prints
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        assert "HttpOnly" in opened.headers["set-cookie"] and "SameSite=Strict" in opened.headers["set-cookie"]
        assert client.get("/api/runs").status_code == 200  # the cookie carries it from now on
        assert "imgclf studio" in client.get("/").text


def test_cross_site_and_rebound_requests_are_refused(client):
    stop = {"run": "runs/a"}
    assert client.post("/api/run/stop", json=stop).status_code == 403  # a form on another site sends no header
    evil = {**CHANGE, "Origin": "http://evil.example"}
    refused = client.post("/api/run/stop", json=stop, headers=evil)
    assert refused.status_code == 403 and "cross-site" in refused.json()["error"]
    same = client.post("/api/run/stop", json=stop, headers={**CHANGE, "Origin": LOCAL})
    assert same.status_code == 409 and "not running" in same.json()["error"]  # past the guard: the run is finished
    rebound = client.get("/api/runs", headers={"Host": "evil.example"})  # DNS rebinding to 127.0.0.1
    assert rebound.status_code == 403


def test_uploads_are_checked_before_anything_is_kept(folder, trained_run):
    settings = StudioSettings(max_upload_bytes=50_000)
    with TestClient(create_app(folder, settings), base_url=LOCAL) as client:
        made = client.post("/api/data", json={"name": "mugs", "classes": ["mine", "yours"]}, headers=CHANGE).json()
        assert made == {"path": "mugs", "classes": {"mine": 0, "yours": 0}}
        good = client.post(
            "/api/data/images",
            params={"data": "mugs", "label": "mine"},
            files=[("files", ("../../a.png", png(1))), ("files", ("b.png", png(2)))],
            headers=CHANGE,
        )
        assert good.status_code == 200 and good.json()["classes"] == {"mine": 2, "yours": 0}
        assert all(p.startswith("mugs/mine/") for p in good.json()["saved"])  # never the uploaded name
        bad = client.post(
            "/api/data/images",
            params={"data": "mugs", "label": "yours"},
            files=[("files", ("ok.png", png(3))), ("files", ("notes.png", b"not an image"))],
            headers=CHANGE,
        )
        assert bad.status_code == 422 and bad.json()["file"] == "notes.png" and "notes.png" in bad.json()["error"]
        big = client.post(
            "/api/data/images",
            params={"data": "mugs", "label": "yours"},
            files={"files": ("big.png", b"\0" * 60_000)},
            headers=CHANGE,
        )
        assert big.status_code == 413
        assert not any((folder / "mugs" / "yours").iterdir())  # the refused requests kept nothing
        one = client.post("/api/data", json={"name": "solo", "classes": ["only"]}, headers=CHANGE)
        assert one.status_code == 422 and "2 different classes" in one.json()["error"]
        tried = client.post("/api/try", params={"run": "runs/a"}, files={"file": ("bomb.png", UNUSABLE["bomb.png"])},
                            headers=CHANGE)  # fmt: skip
        assert tried.status_code == 422 and "bomb.png" in tried.json()["error"]


def test_the_form_is_the_declared_settings(client):
    form = client.get("/api/settings").json()
    names = [f["name"] for f in form["settings"]]
    assert sorted(names) == sorted(s.name for s in settings_fields() if s.meta.get("flag") != "")
    assert names[0] == "data" and {"model", "budget", "epochs"} <= {f["name"] for f in form["settings"] if f["main"]}
    epochs = next(f for f in form["settings"] if f["name"] == "epochs")
    assert epochs["default"] is None and epochs["default_text"] == "the recipe"  # empty: the recipe fills it
    assert form["data"] == ["stripes"]


def test_a_training_request_is_checked_before_any_process_starts(folder, client):
    refused = client.post("/api/train", json={"settings": {"data": "stripes", "epochs": -1}}, headers=CHANGE)
    assert refused.status_code == 422 and "epochs" in refused.json()["error"]
    taken = client.post("/api/train", json={"settings": {"data": "stripes"}, "name": "a"}, headers=CHANGE)
    assert taken.status_code == 409 and "runs/a exists" in taken.json()["error"]
    outside = client.post("/api/train", json={"settings": {"data": "../stripes"}}, headers=CHANGE)
    assert outside.status_code == 404
    assert client.get("/api/jobs").json()["jobs"] == []


def test_trying_a_model_answers_with_overlay_and_nearest_training_images(client, trained_run):
    def ask() -> dict:
        answer = client.post(
            "/api/try", params={"run": "runs/a"}, files={"file": ("x.png", png(4, 32))}, headers=CHANGE
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    first = ask()  # the training images are embedded in the background the first time: the answer comes at once
    assert first["nearest_pending"] or first["nearest"]
    found = wait_for(lambda: (lambda a: a if a["nearest"] else None)(ask()), seconds=120, every=0.5)
    assert found["label"] == first["label"] and found["top_k"] == first["top_k"]
    assert [c["label"] for c in found["top_k"]][0] == found["label"]
    assert sum(c["probability"] for c in found["top_k"]) == pytest.approx(1, abs=1e-4)  # every class of three
    assert found["overlay"].startswith("data:image/png;base64,")
    assert len(found["nearest"]) == 6 and all(n["image"].startswith("data:image/png") for n in found["nearest"])
    assert {n["label"] for n in found["nearest"]} <= {"checker", "horizontal", "vertical"}
    assert found["unknown"] == {"measured": False}  # evaluate --negatives never ran on this run


def test_the_studio_process_imports_no_training_code(folder):
    """Listing, reading, the form and the review load neither training nor PyTorch; trying a model loads
    PyTorch for inference, still not training."""
    probe = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from imgclf.studio.app import create_app\n"
        f"client = TestClient(create_app({str(folder)!r}), base_url={LOCAL!r})\n"
        "for url, params in [('/', {}), ('/api/runs', {}), ('/api/run', {'run': 'runs/a'}), ('/api/settings', {}),\n"
        "                    ('/api/data', {}), ('/api/data/review', {'data': 'stripes'}), ('/docs', {})]:\n"
        "    assert client.get(url, params=params).status_code == 200, url\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('imgclf.train')))\n"
        f"png = open({str(folder / 'stripes' / 'checker' / '000.png')!r}, 'rb').read()\n"
        "tried = client.post('/api/try', params={'run': 'runs/a'}, files={'file': ('x.png', png)},\n"
        "                    headers={'X-Imgclf-Studio': '1'})\n"
        "assert tried.status_code == 200, tried.text\n"
        "print(sorted(m for m in sys.modules if m.startswith('imgclf.train')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["[]", "[]"]


def write_findings(folder: Path, review: Review) -> dict[str, Path]:
    """doctor.json as the doctor writes it: a likely label error with its neighbours, and a leak."""
    data = folder / "stripes"
    suspect, copy_a, copy_b = data / "checker" / "003.png", data / "vertical" / "001.png", data / "vertical" / "002.png"
    findings = {
        "root": str(data),
        "label_issues": [
            {
                "path": str(suspect),
                "given": "checker",
                "suggested": "horizontal",
                "given_probability": 0.1,
                "suggested_probability": 0.85,
                "nearest": {
                    "given": [str(data / "checker" / "004.png")],
                    "suggested": [str(data / "horizontal" / "000.png")],
                },
            },
        ],  # fmt: skip
        "duplicates": [
            {
                "kind": "exact",
                "paths": [str(copy_a), str(copy_b)],
                "labels": ["vertical"] * 2,
                "splits": ["train", "test"],
            }
        ],
        "odd_files": [],
        "notes": [],
    }
    review.folder.mkdir(parents=True)
    (review.folder / "doctor.json").write_text(json.dumps(findings))
    return {"suspect": suspect, "copy_a": copy_a, "copy_b": copy_b}


def test_review_decisions_are_fix_lists_undone_and_applied_only_when_asked(folder, client):
    review = Review(Workspace(folder), "stripes")
    files = write_findings(folder, review)
    items = {i["path"]: i for i in client.get("/api/data/review", params={"data": "stripes"}).json()["items"]}
    assert set(items) == {"stripes/checker/003.png", "stripes/vertical/001.png", "stripes/vertical/002.png"}
    suspect = items["stripes/checker/003.png"]
    assert suspect["suggested"] == "horizontal" and suspect["neighbours"]["suggested"] == ["stripes/horizontal/000.png"]
    assert "leak" in items["stripes/vertical/001.png"]["reasons"][0]

    def decide(path: str, action: str, label: str | None = None) -> dict:
        answer = client.post("/api/data/decide", json={"data": "stripes", "path": path, "action": action, "label": label},
                             headers=CHANGE)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return answer.json()["summary"]

    summary = decide("stripes/vertical/001.png", "exclude")
    assert summary["excluded"] == 1 and summary["exclude_file"].endswith("exclude.txt")
    assert (folder / summary["exclude_file"]).read_text() == f"{files['copy_a']}\n"  # as `train --exclude` reads it
    decide("stripes/checker/003.png", "relabel", "horizontal")
    moves = (review.folder / "moves.csv").read_text().splitlines()
    assert moves == ["file,given,suggested", f"{files['suspect']},checker,horizontal"]
    assert files["suspect"].is_file() and files["copy_a"].is_file()  # decided, nothing moved or deleted
    assert client.post("/api/data/undo", json={"data": "stripes"}, headers=CHANGE).json()["undone"] == (
        "stripes/checker/003.png"
    )
    assert (review.folder / "moves.csv").read_text().splitlines() == ["file,given,suggested"]
    decide("stripes/checker/003.png", "relabel", "horizontal")
    refused = client.post("/api/data/decide", json={"data": "stripes", "path": "stripes/checker/004.png",
                                                    "action": "relabel", "label": "dogs"}, headers=CHANGE)  # fmt: skip
    assert refused.status_code == 422 and "relabel to one of" in refused.json()["error"]
    moved = client.post("/api/data/apply", json={"data": "stripes"}, headers=CHANGE).json()["moved"]
    # horizontal/003.png exists: the moved image takes a free name beside it
    assert moved == [{"from": "stripes/checker/003.png", "to": "stripes/horizontal/003-2.png"}]
    assert not files["suspect"].exists() and (folder / moved[0]["to"]).is_file()
    back = client.post("/api/data/unapply", json={"data": "stripes"}, headers=CHANGE).json()["moved_back"]
    assert back == moved and files["suspect"].is_file() and not (folder / moved[0]["to"]).exists()
    assert (folder / summary["exclude_file"]).read_text() == f"{files['copy_a']}\n"  # the exclusion stands


def test_a_training_started_here_runs_as_a_child_and_one_killed_shows_died_with_its_log(folder, client):
    """(Stop and resume from the page: test_studio_page.py.)"""
    started = client.post(
        "/api/train",
        json={"settings": {"data": "stripes", "epochs": 3000, "image_size": 16, "model": "cnn"}, "name": "live"},
        headers=CHANGE,
    )
    assert started.status_code == 200, started.text
    assert started.json()["args"][:2] == ["train", "--config"] and started.json()["state"] == "running"
    run = {"run": "runs/live"}

    def state() -> str | None:
        found = {r["path"]: r for r in client.get("/api/runs").json()["runs"]}.get("runs/live")
        return found["state"] if found else None

    wait_for(lambda: state() == "running" and len(client.get("/api/run", params=run).json()["history"]) >= 2)
    config = {row["name"]: row["value"] for row in client.get("/api/run", params=run).json()["config"]}
    assert config["epochs"] == 3000 and config["out"] == str(folder / "runs" / "live")
    # killed outright (out of memory, say): no clean stop, so the run says `died`, with the end of its log
    pid = json.loads((folder / "runs" / "live" / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state() == "died")
    died = next(r for r in client.get("/api/runs").json()["runs"] if r["path"] == "runs/live")
    assert died["log"] and any(line.startswith("epoch") for line in died["log"])
    assert client.get("/api/run", params=run).json()["job"]["state"] == "died"
    resumable = client.post("/api/run/resume", json=run, headers=CHANGE)  # a died run resumes, from the page too
    assert resumable.status_code == 200 and resumable.json()["kind"] == "resume"
    client.post("/api/run/stop", json=run, headers=CHANGE)


def test_trying_a_model_says_unknown_as_the_run_measured_it(folder, client):
    from test_unknown import unrelated_folder

    import imgclf

    negatives = unrelated_folder(folder.parent / "blobs")
    measured = imgclf.evaluate(folder / "runs" / "a", negatives=negatives, verbose=False)
    point = min(measured["curves"][measured["chosen"]], key=lambda r: abs(r["coverage"] - 0.95))
    expected = imgclf.classifier(folder / "runs" / "a").predict(negatives, min_confidence=point["threshold"])
    for blob, want in list(zip(sorted(negatives.iterdir()), expected))[:6]:
        tried = client.post("/api/try", params={"run": "runs/a"}, files={"file": (blob.name, blob.read_bytes())},
                            headers=CHANGE).json()  # fmt: skip
        assert tried["unknown"]["measured"] and tried["unknown"]["score"] == measured["chosen"]
        assert tried["unknown"]["threshold"] == pytest.approx(point["threshold"])
        assert tried["label"] == want.label  # `unknown` exactly where `predict` says it


def test_the_report_is_written_by_a_child_process_and_served_sandboxed(folder, client):
    started = client.post("/api/run/report", json={"run": "runs/a"}, headers=CHANGE)
    assert started.status_code == 200 and started.json()["kind"] == "report"
    wait_for(lambda: client.get("/api/jobs").json()["jobs"][0]["state"] != "running")
    assert client.get("/api/jobs").json()["jobs"][0]["state"] == "finished"
    assert client.get("/api/run", params={"run": "runs/a"}).json()["report"] == "runs/a/report.html"
    report = client.get("/api/file", params={"path": "runs/a/report.html"})
    assert report.status_code == 200 and "<html" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox")  # it cannot call the API as the user


def test_the_command_names_a_missing_folder_in_one_line(tmp_path, capsys):
    from imgclf.cli import main

    assert main(["studio", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("imgclf: error:") and "no such folder" in error and len(error.splitlines()) == 1


def test_training_settings_that_name_paths_stay_inside_the_folder(client):
    for name, value in (("weights", "/etc/passwd"), ("data_dir", "../cache"), ("init", "../../run"), ("images", "/")):
        refused = client.post("/api/train", json={"settings": {"data": "stripes", name: value}}, headers=CHANGE)
        assert refused.status_code == 404, name
    outside = client.post("/api/train", json={"settings": {"data": "stripes", "images_outside": True}}, headers=CHANGE)
    assert outside.status_code == 422 and "images_outside" in outside.json()["error"]
    assert client.get("/api/jobs").json()["jobs"] == []


def test_only_this_machines_addresses_go_without_a_token():
    from imgclf.studio import is_loopback

    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.20", "example.org")))


@pytest.mark.slow  # the learning curve embeds the folder with lite0 and fits probes: 10 s alone, CI's time
def test_the_learning_curve_runs_as_a_child_and_its_plot_is_shown(folder, client):
    started = client.post("/api/data/curve", json={"data": "stripes"}, headers=CHANGE)
    assert started.status_code == 200 and started.json()["kind"] == "learning-curve"
    review = lambda: client.get("/api/data/review", params={"data": "stripes"}).json()  # noqa: E731
    wait_for(lambda: review()["jobs"]["learning-curve"]["state"] != "running", seconds=300)
    found = review()
    assert found["jobs"]["learning-curve"]["state"] == "finished", found["jobs"]
    assert found["curve"] == ".imgclf-studio/data/stripes/learning_curve/learning_curve.png"
    assert client.get("/api/file", params={"path": found["curve"]}).headers["content-type"] == "image/png"
