"""The node's work between series completion and its SR, in process, against the old path.

Run: ``python -m benchmarks.bench_sr [--slices 64 128] [--repeats 7]``

For each series size, real CT written as single-frame DICOM (``../shared/data``), timed in
the same run:

- **baseline**: what the analysis worker did before the model's door returned headers:
  :func:`model.api.analyze_series`, then every stored file's header read a second time
  (``dcmread(stop_before_pixels=True)``) for the SR's evidence, then
  :func:`dicom_node.sr.build_sr`;
- **now**: :func:`~model.api.analyze_series` and :func:`~dicom_node.sr.build_sr` on the
  headers the reader kept.

Both build the same SR (checked). Medians of ``--repeats`` runs of each, taken in turn after
one warm-up; the ratio is now / baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from pydicom import Dataset, dcmread

from dicom_node.config import SRConfig
from dicom_node.sr import build_sr
from model.api import Model, SeriesAnalysis, analyze_series, load_model
from tests.node_harness import real_ct_series

SETTINGS = SRConfig(series_number=9901, series_description="Body part regression",
                    manufacturer="bpr-node", institution_name="Benchmark")


def _paired_medians(first: Callable[[], object], second: Callable[[], object], repeats: int
                    ) -> tuple[float, float]:
    """Median seconds of each, run in turn (A B A B …) so that drift hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for run in (first, second):
        run()  # warm-up
    for _ in range(repeats):
        for run, out in zip((first, second), times, strict=True):
            gc.collect()
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _baseline(paths: Sequence[Path], model: Model) -> Dataset:
    analysis = analyze_series(paths, model)
    headers = tuple(dcmread(p, stop_before_pixels=True) for p in paths)
    return build_sr(dataclasses.replace(analysis, headers=headers), SETTINGS)


def _now(paths: Sequence[Path], model: Model) -> Dataset:
    analysis: SeriesAnalysis = analyze_series(paths, model)
    return build_sr(analysis, SETTINGS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, nargs="+", default=[64, 128],
                        help="slices per series (one run each)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure")
    args = parser.parse_args(argv)
    model = load_model()
    print(f"{'slices':>7} {'baseline s':>11} {'now s':>8} {'now/baseline':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.slices:
            paths = real_ct_series(Path(tmp) / str(n), "openkbp_pt_15", pixel_step=1,
                                   slices=slice(0, n))
            if _baseline(paths, model).SOPInstanceUID != _now(paths, model).SOPInstanceUID:
                raise RuntimeError("the two paths built different SRs")
            old, new = _paired_medians(partial(_baseline, paths, model),
                                       partial(_now, paths, model), args.repeats)
            print(f"{len(paths):>7} {old:>11.3f} {new:>8.3f} {new / old:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
