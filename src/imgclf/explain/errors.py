"""Where a model is wrong: its most confident mistakes, the class pairs it confuses, its worst classes; for a
multi-label run, the labels it misses and the ones it adds (spurious), per image and per class."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import atomic_write_json
from ..plots.figures import plot_image_grid
from ..rundir import SplitPredictions
from ..tasks import ErrorAnalysis, Mistake, get_task

__all__ = ["ErrorAnalysis", "ErrorsResult", "Mistake", "analyse_errors", "test_image_names", "write_errors"]


def analyse_errors(predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
    """Where the model is wrong, as the run's task analyses it (:mod:`imgclf.tasks.analysis`)."""
    return get_task(predictions.task).analyse_errors(predictions, classes)


# ---------------------------------------------------------------- a run's errors, written


@dataclass
class ErrorsResult:
    analysis: ErrorAnalysis
    paths: dict[str, Path] = field(default_factory=dict)


def test_image_names(predictions: SplitPredictions, indices: Sequence[int]) -> list[str]:
    """Test images as the user knows them: their paths below the folder all of them share (``cat/003.png``:
    a bare ``003.png`` may be in every class), the middle elided past ``NAME_CHARS``; test indices for built-in
    data, which has no files."""
    sources = predictions.sources
    if not sources:
        return [f"#{index}" for index in indices]
    try:
        root = os.path.commonpath(sources)
    except ValueError:  # absolute and relative paths mixed, or other drives: each file's own folder
        root = ""
    if root in sources:  # a single file: its folder
        root = os.path.dirname(root)
    return [_elided(os.path.relpath(sources[i], root) if root else Path(sources[i]).name) for i in indices]


NAME_CHARS = 32  # a caption's width in a grid of small images at fontsize 7


def _elided(name: str) -> str:
    """``name`` within ``NAME_CHARS``, its end (the file name) kept: the start and the end around an ellipsis."""
    if len(name) <= NAME_CHARS:
        return name
    tail = NAME_CHARS * 2 // 3
    return f"{name[: NAME_CHARS - tail - 1]}…{name[-tail:]}"


def _plot_mistakes(analysis: ErrorAnalysis, predictions: SplitPredictions, top: int, path: Path) -> bool:
    """The most confident mistakes whose images the run kept, as a grid; False if there are none."""
    position = {int(i): k for k, i in enumerate(predictions.example_index.tolist())}
    shown = [m for m in analysis.mistakes[:top] if m.index in position]
    if not shown:
        return False
    images = predictions.example_images[[position[m.index] for m in shown]]
    names = test_image_names(predictions, [m.index for m in shown])
    titles = [analysis.grid_title(m, name) for m, name in zip(shown, names)]
    what = analysis.grid_words
    plot_image_grid(images, titles, path, ["red"] * len(shown), f"the {len(shown)} {what} on the test set")
    return True


def write_errors(
    predictions: SplitPredictions, classes: list[str], top: int, folder: Path, log: Callable[[str], None]
) -> ErrorsResult:
    """Analyse saved test predictions; errors.json and the mistakes grid to ``folder``, the tables to ``log``."""
    analysis = analyse_errors(predictions, classes)
    result = ErrorsResult(analysis, {"json": folder / "errors.json"})
    if _plot_mistakes(analysis, predictions, top, folder / "mistakes.png"):
        result.paths["mistakes"] = folder / "mistakes.png"
    atomic_write_json(result.paths["json"], analysis.to_dict(top))
    log(analysis.summary())
    log("\nper-class accuracy, worst first:\n" + analysis.class_accuracy_table().to_text())
    if analysis.confused_pairs:
        log(f"\n{analysis.pairs_title}:\n" + analysis.confused_pairs_table().to_text())
        log(
            f"\nthe {min(top, len(analysis.mistakes))} most confident mistakes:\n"
            + analysis.mistakes_table(top).to_text()
        )
    log(f"\nwritten: {', '.join(str(p) for p in result.paths.values())}")
    return result
