"""Which images calibrate an INT8 export: the run's validation split alone (80 images on a 1,000-image folder) or
the validation split filled up to 500 with training images (spread evenly over the split, no augmentation).
For each INT8 format of the export table, on real runs (``bench.formats``' runs): the share of test images
given PyTorch's answer, and the test accuracy and macro F1 against PyTorch's, both ways, in the same run.

    python -m bench.int8_calibration [--runs .data/formats-runs/lite0 .data/formats-runs/cnn]

Time it alone: a test suite beside it starves its threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".data"


def main(argv: list[str] | None = None) -> int:
    from imgclf.evaluate import checkpoint_data
    from imgclf.export import FORMATS, RunData, calibration_images, export_classifier
    from imgclf.predict import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=[str(DATA / "formats-runs" / n) for n in ("lite0", "cnn")])
    parser.add_argument("--out", default="/tmp/imgclf-calibration")
    args = parser.parse_args(argv)
    print("| run | format | calibrated on | images | same answer | test accuracy (PyTorch) | macro F1 (PyTorch) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        classifier = load(run, device="cpu")
        _, dataset = checkpoint_data(classifier, classifier.path)
        ways = {"validation only": dataset.val.images, "validation + training": calibration_images(dataset)}
        for row in (f for f in FORMATS if f.quantized):
            for way, images in ways.items():
                started = time.perf_counter()
                data = RunData(images, dataset.test.images, dataset.test.labels)
                out = Path(args.out) / Path(run).name / row.name / way.replace(" ", "-")
                result = export_classifier(classifier, row.name, out, run_data=data, force=True)
                q = result.quantization or {}
                print(
                    f"| {Path(run).name} | {row.name} | {way} | {q['calibration_images']} | {q['agreement']:.2%} | "
                    f"{q['accuracy']:.4f} ({q['accuracy_pytorch']:.4f}) | {q['macro_f1']:.4f} "
                    f"({q['macro_f1_pytorch']:.4f}) | {time.perf_counter() - started:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
