"""The work the studio starts (training, resuming, the doctor, the learning curve, a report) as child processes
running the ``imgclf`` command, so the studio's own process never imports training code and a page reload, or
the studio stopping, leaves the work running.

Each job is a record and a log in ``DIR/.imgclf-studio/jobs/``: the command, the process, and when it ended its
exit status. A stop is SIGTERM, which the command turns into a clean stop (the run ``stopped``, resumable).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_json
from ..runs import alive
from .workspace import Workspace

LOG_LINES = 20  # of a job's log shown beside a run that failed or died
STOPPED = (-signal.SIGTERM, 128 + signal.SIGTERM, 130)  # exit statuses of a stop: SIGTERM (early or handled), ^C


@dataclass
class Job:
    id: str
    kind: str  # train, resume, doctor, learning-curve, report
    target: str  # what it works on, relative to DIR: the run, or the data folder
    args: list[str]  # imgclf's arguments
    pid: int
    started: str
    returncode: int | None = None
    stop_requested: bool = False

    @property
    def state(self) -> str:
        """running, finished, stopped, failed (an error it reported), died (killed, or crashed), or ended (started
        by an earlier studio, gone since: how it ended is its run's status.json's to say)."""
        if self.returncode is None:  # a job of an earlier studio (or one this one has not reaped yet)
            return "running" if alive(self.pid) and is_imgclf(self.pid) else "ended"
        if self.returncode == 0:
            return "finished"
        if self.returncode in STOPPED:
            return "stopped"
        return "failed" if self.returncode == 2 else "died"


class Jobs:
    """The jobs of one studio folder: started here, or by an earlier studio on the same folder."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.children: dict[str, subprocess.Popen] = {}  # this process's own, reaped by `poll`

    @property
    def folder(self) -> Path:
        return self.workspace.studio / "jobs"

    def start(self, kind: str, target: str, args: list[str]) -> Job:
        self.folder.mkdir(parents=True, exist_ok=True)
        job_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        with open(self.folder / f"{job_id}.log", "wb") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "imgclf", *args],
                cwd=self.workspace.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the studio's ^C is not the job's: training outlives the page and the studio
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the log has each line as it is printed
            )
        job = Job(job_id, kind, target, args, child.pid, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.children[job_id] = child
        self._save(job)
        return job

    def _save(self, job: Job) -> None:
        atomic_write_json(self.folder / f"{job.id}.json", asdict(job))

    def poll(self) -> None:
        """Record the exit status of this process's children that ended (and reap them: a zombie looks alive)."""
        for job_id, child in list(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[job_id]
            job = self.get(job_id)
            if job is not None:
                job.returncode = code
                self._save(job)

    def get(self, job_id: str) -> Job | None:
        try:
            return Job(**json.loads((self.folder / f"{job_id}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Job]:
        """Every job, the newest first."""
        if not self.folder.is_dir():
            return []
        jobs = (self.get(p.stem) for p in sorted(self.folder.glob("*.json"), reverse=True))
        return [job for job in jobs if job is not None]

    def latest(self, target: str, kinds: tuple[str, ...] = ("train", "resume")) -> Job | None:
        return next((job for job in self.all() if job.target == target and job.kind in kinds), None)

    def state(self, job: Job) -> str:
        """The job's state, this process's own children asked directly (one that just ended is a zombie until
        reaped, and a zombie looks alive)."""
        child = self.children.get(job.id)
        if child is not None:
            if child.poll() is None:
                return "running"
            self.poll()
            job.returncode = child.returncode
        return job.state

    def log_tail(self, job: Job, lines: int = LOG_LINES) -> list[str]:
        try:
            with open(self.folder / f"{job.id}.log", encoding="utf-8", errors="replace") as log:
                return [line.rstrip("\n") for line in deque(log, maxlen=lines)]
        except OSError:
            return []

    def stop(self, job: Job) -> bool:
        """SIGTERM to a running job (its command stops cleanly); False where it is not running."""
        if self.state(job) != "running" or not is_imgclf(job.pid):
            return False
        job.stop_requested = True
        self._save(job)
        return terminate(job.pid)

    def describe(self, job: Job) -> dict[str, Any]:
        """A job as the API shows it: its record, its state, and the end of its log where it did not finish."""
        state = self.state(job)
        described = {**asdict(job), "state": state}
        if state in ("failed", "died"):
            described["log"] = self.log_tail(job)
        return described


def is_imgclf(pid: int) -> bool:
    """Whether ``pid`` runs imgclf (a process id is reused once its process ends: never signal a stranger)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return sys.platform != "linux" and alive(pid)  # no /proc to read: trust the record
    return b"imgclf" in command


def terminate(pid: int) -> bool:
    """SIGTERM to an imgclf process (a run started elsewhere, by its status.json's pid); False for any other."""
    if not is_imgclf(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True
