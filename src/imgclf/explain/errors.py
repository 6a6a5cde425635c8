"""Where a model is wrong: its most confident mistakes, the class pairs it confuses, its worst classes; for a
multi-label run, the labels it misses and the ones it adds (spurious), per image and per class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import atomic_write_json
from ..plots.figures import plot_image_grid
from ..rundir import SplitPredictions
from ..tasks import ErrorAnalysis, Mistake, get_task

__all__ = ["ErrorAnalysis", "ErrorsResult", "Mistake", "analyse_errors", "test_image_name", "write_errors"]


def analyse_errors(predictions: SplitPredictions, classes: list[str]) -> ErrorAnalysis:
    """Where the model is wrong, as the run's task analyses it (:mod:`imgclf.tasks.analysis`)."""
    return get_task(predictions.task).analyse_errors(predictions, classes)


# ---------------------------------------------------------------- a run's errors, written


@dataclass
class ErrorsResult:
    analysis: ErrorAnalysis
    paths: dict[str, Path] = field(default_factory=dict)


def test_image_name(predictions: SplitPredictions, index: int) -> str:
    """A test image as the user knows it: its file name for folders and CSVs, else its test index."""
    return Path(predictions.sources[index]).name[:20] if predictions.sources else f"#{index}"


def _plot_mistakes(analysis: ErrorAnalysis, predictions: SplitPredictions, top: int, path: Path) -> bool:
    """The most confident mistakes whose images the run kept, as a grid; False if there are none."""
    position = {int(i): k for k, i in enumerate(predictions.example_index.tolist())}
    shown = [m for m in analysis.mistakes[:top] if m.index in position]
    if not shown:
        return False
    images = predictions.example_images[[position[m.index] for m in shown]]
    titles = [analysis.grid_title(m, test_image_name(predictions, m.index)) for m in shown]
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
