"""The studio's web app: the page at ``/`` and the JSON API under ``/api/`` it uses (documented at ``/docs``).

Live views are server-sent events: the studio follows the runs' ``status.json`` and ``events.jsonl`` on the
server and sends what changed; the page never polls files. Work is done by child processes (:mod:`.jobs`); the
only model this process loads is the one a user tries (inference, on first use). Every refusal is a 4xx
``{"error": ..., "file": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Body, FastAPI, File, Query, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..config import RECIPE, TrainConfig, settings_fields, value_kind
from ..errors import ImgclfError
from ..rundir import EVENTS, METRICS, PLOTS, REPORT, STATUS, RunDir
from ..runs import state_of
from ..runtime import imgclf_version
from ..serve.http import BodyLimit, RequestProblem, answer_errors_as_json, offline_docs
from .jobs import Jobs, terminate
from .review import Review
from .security import StudioGuard
from .settings import StudioSettings
from .trying import BadImage, Models
from .workspace import IMAGE_SUFFIXES, OutsideFolder, Workspace, check_name

FOLLOW_SECONDS = 0.5  # how often the server looks at the runs' files for the live views
KEEP_ALIVE_SECONDS = 15  # a comment line on a quiet stream, so proxies and browsers keep it open
PATH_SETTINGS = ("images", "exclude", "weights", "init", "data_dir")  # besides `data`, which may name a dataset
MAIN_SETTINGS = ("data", "model", "budget", "epochs", "image_size", "exclude")  # the form's first fields
SERVED = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
          ".webp": "image/webp", ".bmp": "image/bmp", ".html": "text/html", ".json": "application/json",
          ".csv": "text/csv", ".txt": "text/plain", ".yaml": "text/plain"}  # fmt: skip
# a page of the studio's folder (a report) runs in its own origin: it cannot call the API with the user's cookie
SANDBOX = {"Content-Security-Policy": "sandbox allow-popups", "X-Content-Type-Options": "nosniff"}


class Snapshot:
    """The runs table, read from disk at most once per FOLLOW_SECONDS however many pages follow it."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read, self.taken, self.lock = read, 0.0, asyncio.Lock()
        self.value: dict[str, Any] = {}

    async def get(self) -> dict[str, Any]:
        async with self.lock:
            if time.monotonic() - self.taken >= FOLLOW_SECONDS * 0.8:
                self.value, self.taken = await run_in_threadpool(self.read), time.monotonic()
            return self.value


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def form_settings() -> list[dict[str, Any]]:
    """The training form, field by field, from the settings' declarations (those the command line offers)."""
    fields = []
    for spec in settings_fields():
        if spec.meta.get("flag") == "":  # a mapping (model_args): a config file's, not a form's
            continue
        kind = value_kind(spec.hint)
        fields.append(
            {
                "name": spec.name,
                "section": spec.section,
                "kind": kind.__name__,
                "choices": spec.meta.get("choices"),
                "default": None if spec.recipe else spec.default(),
                "default_text": spec.meta.get("default_text") or (RECIPE if spec.recipe else None),
                "help": spec.meta["help"],
                "main": spec.name in MAIN_SETTINGS,
            }
        )
    order = {name: i for i, name in enumerate(MAIN_SETTINGS)}
    return sorted(fields, key=lambda f: (not f["main"], order.get(f["name"], 0)))


def create_app(
    folder: str | os.PathLike, settings: StudioSettings | None = None, *, loopback_only: bool = True
) -> FastAPI:
    """The studio over ``folder`` (see the module's docstring); ``uvicorn.run(app)`` runs it."""
    settings = settings or StudioSettings()
    workspace = Workspace(folder)
    jobs = Jobs(workspace)
    models = Models(workspace, settings.max_image_pixels)

    def runs_table() -> dict[str, Any]:
        jobs.poll()  # first: a child that ended is reaped, else it would look alive
        runs = [workspace.info(r) for r in workspace.runs()]
        listed = {r["path"] for r in runs}
        pending = [jobs.describe(j) for j in jobs.all() if j.kind == "train" and j.target not in listed]
        for run in runs:
            job = jobs.latest(run["path"])
            if job is not None and run["state"] in ("died", "failed"):
                run["log"] = jobs.log_tail(job)
        return {"runs": runs, "starting": [j for j in pending if j["state"] in ("running", "died", "failed")]}

    snapshot = Snapshot(runs_table)
    app = FastAPI(
        title="imgclf studio",
        summary=f"the runs and data in {workspace.root.name or workspace.root}",
        version=imgclf_version(),
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(StudioGuard, token=settings.token, loopback_only=loopback_only)
    answer_errors_as_json(app)
    offline_docs(app)

    def run_dir(run: str) -> RunDir:
        try:
            return workspace.run(run)
        except OutsideFolder as exc:
            raise RequestProblem(404, str(exc), run) from None

    def inside(path: str, must_exist: bool = True) -> Path:
        try:
            return workspace.path(path, must_exist)
        except OutsideFolder as exc:
            raise RequestProblem(404, str(exc), path) from None

    def review(data: str) -> Review:
        try:
            return Review(workspace, data)
        except OutsideFolder as exc:
            raise RequestProblem(404, str(exc), data) from None

    def refuse(exc: Exception, status: int = 422, file: str | None = None) -> RequestProblem:
        return RequestProblem(status, str(exc), file)

    # ------------------------------------------------------------ the page

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        about = {"folder": str(workspace.root), "version": imgclf_version()}
        return HTMLResponse(html.replace("__STUDIO__", json.dumps(about).replace("</", "<\\/")))

    @app.get("/api/file", include_in_schema=True)
    async def file(path: Annotated[str, Query(description="a file, relative to the studio's folder")]) -> FileResponse:
        """A file of the studio's folder: an image, a plot, a report (HTML pages are sandboxed)."""
        found = inside(path)
        kind = SERVED.get(found.suffix.lower())
        if not found.is_file() or kind is None:
            raise RequestProblem(404, f"{path}: not an image, plot or report of the studio's folder", path)
        return FileResponse(found, media_type=kind, headers=SANDBOX)

    # ------------------------------------------------------------ runs

    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        """Every run in the folder (and a level down), newest first: state, data, model, epoch, accuracy, ETA;
        and training the studio started that has no run directory yet (or died before it had one)."""
        return await snapshot.get()

    @app.get("/api/stream")
    async def stream() -> StreamingResponse:
        """Server-sent events: `runs` (what GET /api/runs answers) each time it changes."""

        async def events() -> AsyncIterator[str]:
            last, quiet = None, 0.0
            while True:
                table = await snapshot.get()
                if table != last:
                    last, quiet = table, 0.0
                    yield _event("runs", table)
                elif quiet >= KEEP_ALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(FOLLOW_SECONDS)
                quiet += FOLLOW_SECONDS

        return _stream(events())

    def detail(run: RunDir) -> dict[str, Any]:
        jobs.poll()
        config = run.read_config()
        sources = config.pop("sources", {}) if isinstance(config, dict) else {}
        rows = [
            {"section": section, "name": name, "value": value, "source": sources.get(name, "")}
            for section, values in config.items()
            if isinstance(values, dict)
            for name, value in values.items()
        ]
        epochs = {e["epoch"]: e["row"] for e in run.read_events() if e.get("event") == "epoch" and "row" in e}
        try:
            metrics = json.loads((run / METRICS).read_text())
        except (OSError, ValueError):
            metrics = {}
        test = {k: v for k, v in (metrics.get("test") or {}).items() if isinstance(v, (int, float))}
        job = jobs.latest(workspace.relative(run.path) or "")
        plots = sorted(p.relative_to(workspace.root).as_posix() for p in (run / PLOTS).glob("*.png"))
        return {
            "run": workspace.info(workspace.run_info(run.path)),  # re-read only where its files changed
            "status": run.read_status(),
            "config": rows,
            "history": [epochs[k] for k in sorted(epochs)],
            "test": test,
            "search": run.read_search(),
            "plots": plots,
            "report": (workspace.relative(run / REPORT) if (run / REPORT).is_file() else None),
            "unknown_measured": run.read_unknown_result() is not None,
            "job": jobs.describe(job) if job is not None else None,
        }

    @app.get("/api/run")
    async def run(run: Annotated[str, Query(description="the run, relative to the studio's folder")]) -> dict[str, Any]:
        """One run: its state, config (each value with where it came from), epochs, test metrics, search table,
        plots, report, and the job that runs it (with the end of its log if it failed or died)."""
        return await run_in_threadpool(detail, run_dir(run))

    @app.get("/api/run/events")
    async def run_events(run: Annotated[str, Query()]) -> StreamingResponse:
        """Server-sent events of one run: `reset`, then each line of its events.jsonl (`train`) as it is
        written, and its status.json (`status`) when it changes."""
        found = run_dir(run)

        async def events() -> AsyncIterator[str]:
            offset, partial, status_seen, quiet = 0, b"", None, 0.0
            yield _event("reset", {})
            while True:
                sent = False
                try:
                    with open(found / EVENTS, "rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                if chunk:
                    offset += len(chunk)
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        try:
                            yield _event("train", json.loads(line))
                            sent = True
                        except ValueError:  # a line cut short by a crash
                            continue
                try:
                    status = (found / STATUS).read_bytes()
                except OSError:
                    status = None
                if status and status != status_seen:
                    status_seen = status
                    try:
                        status_json = json.loads(status)
                    except ValueError:
                        status_json = None
                    if status_json is not None:
                        status_json["state"] = state_of(status_json)  # `running` whose process is gone: died
                        yield _event("status", status_json)
                        sent = True
                quiet = 0.0 if sent else quiet + FOLLOW_SECONDS
                if quiet >= KEEP_ALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(FOLLOW_SECONDS)

        return _stream(events())

    @app.post("/api/run/stop")
    async def stop(run: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Stop a running run cleanly (SIGTERM: it ends `stopped`, resumable from its last epoch)."""
        found = run_dir(run)
        status = found.read_status() or {}
        relative = workspace.relative(found.path) or run
        job = jobs.latest(relative)
        if job is not None and jobs.stop(job):
            return {"stopping": relative}
        pid = status.get("pid")
        if (
            workspace.run_info(found.path).state == "running" and isinstance(pid, int) and terminate(pid)
        ):  # started elsewhere
            return {"stopping": relative}
        raise RequestProblem(409, f"{relative} is not running here", run)

    @app.post("/api/run/resume")
    async def resume(run: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Continue a stopped, failed or died run from its last finished epoch, in a child process."""
        found = run_dir(run)
        relative = workspace.relative(found.path) or run
        state = workspace.run_info(found.path).state
        if state in ("running", "finished"):
            raise RequestProblem(409, f"{relative} is {state}: only a stopped, failed or died run resumes", run)
        models.forget(found)
        job = jobs.start("resume", relative, ["train", "--resume", str(found.path)])
        return jobs.describe(job)

    @app.post("/api/run/report")
    async def write_report(run: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Write the run's report.html (imgclf report), in a child process."""
        found = run_dir(run)
        relative = workspace.relative(found.path) or run
        return jobs.describe(jobs.start("report", relative, ["report", str(found.path)]))

    @app.get("/api/compare")
    async def compare(run: Annotated[list[str], Query(min_length=1)]) -> dict[str, Any]:
        """Runs side by side: each one's epochs (to overlay the curves) and test metrics."""
        found = [await run_in_threadpool(detail, run_dir(r)) for r in run]
        keys = ("run", "history", "test")
        return {"runs": [{k: d[k] for k in keys} for d in found]}

    # ------------------------------------------------------------ starting work

    @app.get("/api/settings")
    async def training_settings() -> dict[str, Any]:
        """The training form: every setting the command line offers, as declared (type, choices, default, help),
        the main ones first; and the data folders to pick from."""
        data = [d.path for d in await run_in_threadpool(workspace.data_folders)]
        return {"settings": form_settings(), "data": data}

    @app.post("/api/train")
    async def train(
        settings_given: Annotated[dict[str, Any], Body(alias="settings", embed=True)],
        name: Annotated[str | None, Body(embed=True)] = None,
    ) -> dict[str, Any]:
        """Start training in a child process (as `imgclf train --config FILE` with the settings given); the run
        goes to runs/NAME in the studio's folder."""
        given = {k: v for k, v in settings_given.items() if v not in (None, "")}
        given.pop("out", None)
        data = str(given.get("data", ""))
        if not data:
            raise RequestProblem(422, "`data`: pick a data folder (or name a built-in dataset)")
        if "/" in data or (workspace.root / data).exists():  # else a built-in dataset's name
            given["data"] = str(inside(data))
        for setting in PATH_SETTINGS:  # read or written by the run: inside the studio's folder, like every path here
            if given.get(setting):
                given[setting] = str(inside(str(given[setting]), must_exist=setting != "data_dir"))
        if given.get("images_outside"):
            raise RequestProblem(422, "`images_outside`: the studio reads no image outside its folder; leave it off")
        try:
            run_name = check_name(name or f"{Path(data).name}-{given.get('model', 'auto')}", "run name")
            TrainConfig(**given)  # every value checked here: a mistake is a message now, not a failed job
        except (ValueError, ImgclfError) as exc:
            raise refuse(exc) from None
        out = workspace.root / "runs" / run_name
        if out.exists():
            raise RequestProblem(409, f"runs/{run_name} exists; choose another run name", f"runs/{run_name}")
        config = jobs.folder / f"{run_name}-{int(time.time())}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(given, sort_keys=False))
        job = jobs.start("train", f"runs/{run_name}", ["train", "--config", str(config), "--out", str(out)])
        return jobs.describe(job)

    @app.get("/api/jobs")
    async def all_jobs() -> dict[str, Any]:
        """Everything the studio started (training, resuming, the doctor, curves, reports), newest first."""
        jobs.poll()
        return {"jobs": [jobs.describe(j) for j in jobs.all()]}

    # ------------------------------------------------------------ data

    @app.get("/api/data")
    async def data_folders() -> dict[str, Any]:
        """The folders of class sub-folders in the studio's folder, with their images per class."""
        found = await run_in_threadpool(workspace.data_folders)
        return {"data": [{"path": d.path, "classes": d.classes, "images": d.images} for d in found]}

    @app.post("/api/data")
    async def make_data(
        name: Annotated[str, Body(embed=True)], classes: Annotated[list[str], Body(embed=True)]
    ) -> dict[str, Any]:
        """Make a dataset: the folder NAME with a sub-folder per class (those that exist are kept)."""
        try:
            folder = check_name(name, "dataset name")
            names = [check_name(c, "class name") for c in classes]
        except ValueError as exc:
            raise refuse(exc) from None
        if len(set(names)) < 2:
            raise RequestProblem(422, "a dataset needs at least 2 different classes")
        for cls in names:
            (workspace.root / folder / cls).mkdir(parents=True, exist_ok=True)
        made = workspace.data_folder(folder)
        return {"path": made.path, "classes": made.classes}

    @app.post("/api/data/images")
    async def add_images(
        data: Annotated[str, Query(description="the dataset folder")],
        label: Annotated[str, Query(description="its class")],
        files: Annotated[list[UploadFile], File(description="image files (or webcam frames)")],
    ) -> dict[str, Any]:
        """Add images to a class of a dataset; each is checked as training decodes it, and one that is not a
        usable image is refused by name (nothing of that request is kept)."""
        from ..data.images import decode_bytes, describe_skip

        try:
            cls = check_name(label, "class name")
        except ValueError as exc:
            raise refuse(exc) from None
        folder = inside(data) / cls
        if not folder.is_dir() or folder.parent.resolve() != inside(data):
            raise RequestProblem(404, f"{data}/{cls}: no such class folder; add the class first", data)
        accepted = []
        for upload in files:
            content = await upload.read()
            spec = _decode_spec(settings.max_image_pixels)
            result = await run_in_threadpool(decode_bytes, content, spec)
            if isinstance(result, str):
                raise RequestProblem(422, f"{upload.filename or 'upload'}: {describe_skip(result)}", upload.filename)
            accepted.append((upload.filename or "image", content))
        saved = []
        for original, content in accepted:
            suffix = Path(original).suffix.lower() if Path(original).suffix.lower() in IMAGE_SUFFIXES else ".png"
            target = _new_file(folder, suffix)
            target.write_bytes(content)
            saved.append(target.relative_to(workspace.root).as_posix())
        return {"saved": saved, "classes": workspace.data_folder(data).classes}

    @app.post("/api/data/doctor")
    async def doctor(data: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Run the doctor on a data folder (child process): duplicates, leaks, likely label errors."""
        found = review(data)
        args = ["doctor", str(found.root), "--out", str(found.folder)]
        return jobs.describe(jobs.start("doctor", found.data, args))

    @app.post("/api/data/curve")
    async def curve(data: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Run the learning curve on a data folder (child process): how many more images would help."""
        found = review(data)
        args = ["learning-curve", str(found.root), "--out", str(found.folder.parent / "learning_curve")]
        return jobs.describe(jobs.start("learning-curve", found.data, args))

    @app.get("/api/data/review")
    async def review_data(data: Annotated[str, Query()]) -> dict[str, Any]:
        """What the doctor found in a data folder, image by image, with the decisions taken; the learning curve."""
        found = review(data)
        jobs.poll()
        plot = found.folder.parent / "learning_curve" / "learning_curve.png"
        latest = {k: jobs.latest(found.data, (k,)) for k in ("doctor", "learning-curve")}
        findings = found.findings()
        return {
            "data": found.data,
            "classes": workspace.data_folder(data).classes,
            "checked": findings is not None,
            "items": found.items(),
            "notes": (findings or {}).get("notes", []),
            "summary": found.summary(),
            "curve": workspace.relative(plot) if plot.is_file() else None,
            "jobs": {k: jobs.describe(j) if j else None for k, j in latest.items()},
        }

    @app.post("/api/data/decide")
    async def decide(
        data: Annotated[str, Body()],
        path: Annotated[str, Body()],
        action: Annotated[str, Body(description="keep, exclude or relabel")],
        label: Annotated[str | None, Body()] = None,
    ) -> dict[str, Any]:
        """Keep, exclude or relabel one image: written to the doctor's fix lists (exclude.txt, moves.csv);
        nothing is moved or deleted."""
        found = review(data)
        try:
            decision = found.decide(path, action, label)
        except (ValueError, OutsideFolder) as exc:
            raise refuse(exc, file=path) from None
        return {"decision": decision, "summary": found.summary()}

    @app.post("/api/data/undo")
    async def undo(data: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Take the last decision back."""
        found = review(data)
        return {"undone": found.undo(), "summary": found.summary()}

    @app.post("/api/data/apply")
    async def apply(data: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Move the images decided to be relabelled into their new class folders (undo: /api/data/unapply)."""
        found = review(data)
        return {"moved": found.apply_moves(), "summary": found.summary()}

    @app.post("/api/data/unapply")
    async def unapply(data: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
        """Move the last applied relabels back."""
        found = review(data)
        return {"moved_back": found.undo_moves(), "summary": found.summary()}

    # ------------------------------------------------------------ trying a model

    @app.post("/api/try")
    async def try_model(
        run: Annotated[str, Query(description="the run whose model answers")],
        file: Annotated[UploadFile, File(description="one image (a file or a webcam frame)")],
    ) -> dict[str, Any]:
        """One image's answer: the probabilities, the Grad-CAM overlay, the nearest training images, and
        `unknown` where the run measured it (evaluate --negatives)."""
        found = run_dir(run)
        content = await file.read()
        try:
            return await run_in_threadpool(models.answer, found, file.filename or "upload", content)
        except BadImage as exc:
            raise refuse(exc, file=file.filename) from None
        except ImgclfError as exc:
            raise refuse(exc, 409, run) from None

    return app


def _decode_spec(max_pixels: int) -> Any:
    from ..config import DecodeSpec

    return DecodeSpec(32, "crop", max_pixels)  # any size: the check is that the file decodes within the limit


def _new_file(folder: Path, suffix: str) -> Path:
    """A new file name in ``folder`` (never an uploaded name: it could be ``../x`` or overwrite an image)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while (folder / f"{stamp}-{n:03d}{suffix}").exists():
        n += 1
    return folder / f"{stamp}-{n:03d}{suffix}"
