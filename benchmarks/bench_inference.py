"""Inference speed of SliceScoreNet against bpreg's VGG16, network only and end to end.

Run from the repository root::

    python -m benchmarks.bench_inference [--slices 300] [--repeats 3] [--threads 2] [--json PATH]

Every figure stands beside its baseline, measured in the same run and named in brackets:

* ``[VGG16]``: bpreg's network (random weights: speed does not depend on them) in the same
  pipeline;
* ``[pydicom floor]``: ``pydicom.dcmread`` + ``pixel_array`` of every file, one after the
  other: what any reader built on pydicom pays before doing anything with the pixels;
* ``[whole volume held]``: peak RSS of a process that reads the series into one full-
  resolution float32 volume before scoring it (the reader before streaming).

``gain`` says how many times better ours is: throughput ours / baseline, times and sizes
baseline / ours. End to end, ours, VGG16, our reader and the floor run in turn within
each of ``--repeats`` rounds (ours and the floor three times per round), so that a shared
machine's slow spells hit them alike. The end-to-end series is generated from a real NIfTI
volume as uncompressed 16-bit 512² DICOM; it is read from the page cache, so the read figures
exclude disk latency.
Use ``--slices 1000`` for a thin-slice series.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import torch
from scipy import ndimage
from torch import nn

from model.cli.output import write_json
from model.interpretation.analysis import AnalysisSettings, interpret
from model.interpretation.postprocess import body_pixel_counts
from model.paths import DEFAULT_META, DEFAULT_WEIGHTS, shared_data_dir
from model.reading.dicom import scan_dicom_series
from model.reading.dicom_assembly import decode_slices
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring import preprocess
from model.scoring.inference import (
    INFERENCE_BATCH,
    BodyPartRegressor,
    ModelMeta,
    ScoringNet,
    SliceScores,
)
from model.scoring.network import STAGE_CHANNELS, SliceScoreNet, VGG16Baseline, count_parameters
from model.scoring.streaming import CHUNK_SLICES, stream_series
from tests.dicom_factory import write_ct_series

#: Default source of the synthetic DICOM series (a chest CT).
DEFAULT_SOURCE = shared_data_dir() / "ct" / "lidc_0003.nii.gz"
#: In-plane field of view and matrix of the series: 400 mm / 512 px ≈ 0.78 mm pixels.
FOV_MM, MATRIX = 400.0, 512
STAGES = ("headers", "decode + preprocess", "network", "json")


@dataclass
class Row:
    """One figure of the report: ours, the baseline (if any) and which direction is better."""

    label: str
    unit: str
    ours: float
    baseline: float | None = None
    higher_is_better: bool = False

    @property
    def gain(self) -> float | None:
        """How many times better ours is than the baseline, or None without a baseline."""
        if self.baseline is None or self.ours <= 0 or self.baseline <= 0:
            return None
        ratio = self.ours / self.baseline
        return ratio if self.higher_is_better else 1.0 / ratio


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hardware() -> dict[str, Any]:
    """CPU model, core counts, load and torch threading of this machine."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
              if ln.startswith("model name")]
    return {
        "cpu": models[0] if models else "unknown", "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)), "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }


def weight_mb(net: nn.Module) -> float:
    """Size in MB (10⁶ bytes) of the serialised state dict, i.e. of a shipped weights file."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def make_series(source: Path, n_slices: int, folder: Path) -> CTVolume:
    """Write a clinical-size DICOM series (512², ≈0.78 mm, ``n_slices``) made from ``source``.

    The central 400 mm of each slice is upsampled to 512² and z resampled to ``n_slices``
    over the same extent, both linearly (``scipy.ndimage.zoom``, order 1).
    """
    vol = read_nifti(source)
    (n, rows, cols), (sp_r, sp_c) = vol.hu.shape, vol.pixel_spacing_mm
    keep_r, keep_c = min(rows, round(FOV_MM / sp_r)), min(cols, round(FOV_MM / sp_c))
    r0, c0 = (rows - keep_r) // 2, (cols - keep_c) // 2
    crop = vol.hu[:, r0 : r0 + keep_r, c0 : c0 + keep_c]
    hu = ndimage.zoom(crop, (n_slices / n, MATRIX / keep_r, MATRIX / keep_c), order=1)
    volume = CTVolume(
        hu=np.ascontiguousarray(hu, dtype=np.float32),
        z_mm=np.linspace(vol.z_mm[0], vol.z_mm[-1], hu.shape[0]),
        pixel_spacing_mm=(keep_r * sp_r / hu.shape[1], keep_c * sp_c / hu.shape[2]),
        source=str(source),
    )
    write_ct_series(volume, folder)
    return volume


def run_pipeline(folder: Path, regressor: BodyPartRegressor, out: Path) -> dict[str, float]:
    """One in-process ``bpr predict`` of ``folder``, timed per stage (as ``analyze_plan``)."""
    t = [time.perf_counter()]
    scan = scan_dicom_series(sorted(folder.iterdir()))
    if scan.errors or len(scan.plans) != 1:
        raise RuntimeError(f"expected one clean series in {folder}: {scan.errors}")
    t.append(time.perf_counter())
    errors: list[str] = []
    streamed = stream_series(scan.plans[0], errors)
    t.append(time.perf_counter())
    raw = regressor.raw_scores(streamed.slices)
    series = streamed.description
    result = SliceScores(z_mm=series.z_mm, raw=raw, scores=regressor.to_reference_scale(raw))
    t.append(time.perf_counter())
    analysis = interpret(series, result, body_pixel_counts(streamed.slices), regressor,
                         AnalysisSettings(), sample=streamed.sample)
    write_json(analysis.to_json_dict(), out)
    t.append(time.perf_counter())
    return dict(zip(STAGES, np.diff(t).tolist(), strict=True))


def interleaved_medians(runs: Mapping[str, tuple[Callable[[], Mapping[str, float]], int]],
                        rounds: int) -> dict[str, dict[str, float]]:
    """Median of every figure of each run, the runs taken in turn within each round.

    ``runs`` maps a name to (a callable returning named seconds, how many calls per round).
    One untimed round warms caches first. Interleaving makes a ratio between two runs fair
    on a shared machine: a slow minute slows both, where timing one after the other once
    moved a ratio by a third.
    """
    for fn, _ in runs.values():
        fn()
    times: dict[str, list[Mapping[str, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, calls) in runs.items():
            times[name] += [fn() for _ in range(calls)]
    return {name: {key: statistics.median(t[key] for t in got) for key in got[0]}
            for name, got in times.items()}


def pipeline_seconds(folder: Path, regressor: BodyPartRegressor, out: Path) -> dict[str, float]:
    """Stage times of :func:`run_pipeline`, with their ``total``."""
    stages = run_pipeline(folder, regressor, out)
    return {**stages, "total": sum(stages.values())}


def read_seconds(files: Sequence[Path]) -> float:
    """Seconds to read ``files`` to HU as ``bpr predict`` does: headers, then every frame
    decoded chunk by chunk into one reused buffer (no preprocessing)."""
    start = time.perf_counter()
    plan = scan_dicom_series(files).plans[0]
    chunk = np.empty((min(len(plan.frames), CHUNK_SLICES), *plan.shape), np.float32)
    for first in range(0, len(plan.frames), CHUNK_SLICES):
        decode_slices(plan, first, chunk[:len(plan.frames) - first], [])
    return time.perf_counter() - start


#: Child process that runs one way of predicting a folder and reports its peak RSS.
_RSS_CHILD = """
import sys
from pathlib import Path
mode, folder, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if mode == "streamed":
    from bpr.cli import main
    rc = main(["predict", str(folder), "--out", str(out), "--threads", sys.argv[4]])
else:  # the whole volume in memory at full resolution, as the reader did before streaming
    import torch
    torch.set_num_threads(int(sys.argv[4]))
    from model.interpretation.analysis import analyze
    from model.reading.load import load_volumes
    analyze(load_volumes(folder).volumes[0])
    rc = 0
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec
hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")]
print(hwm[0].split()[1])
sys.exit(rc)
"""


def peak_rss_mb(mode: str, folder: Path, out: Path, threads: int) -> float:
    """Peak resident memory (MB) of a fresh process predicting ``folder`` in ``mode``."""
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, mode, str(folder), str(out),
                           str(threads)], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024  # VmHWM is in kB


def dcmread_ms(files: Sequence[Path], pixels: bool) -> float:
    """Milliseconds per file for ``pydicom.dcmread`` (header only, or with ``pixel_array``)."""
    start = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        if pixels:
            _ = ds.pixel_array  # decoding is part of what is timed
    return (time.perf_counter() - start) / len(files) * 1e3


def subprocess_seconds(cmd: list[str], repeats: int) -> float:
    """Median wall time of running ``cmd`` (no warm-up: a fresh process is the point)."""
    return median_seconds(lambda: subprocess.run(cmd, check=True, capture_output=True),
                          repeats, warmup=0)


def render(rows: Sequence[Row]) -> str:
    """Plain-text table of ``rows``."""
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

    lines = [f"{'figure [baseline]':<50} {'unit':<9} {'ours':>12} {'baseline':>12} {'gain':>8}"]
    for r in rows:
        gain = "—" if r.gain is None else f"×{r.gain:.3g}"
        lines.append(f"{r.label:<50} {r.unit:<9} {fmt(r.ours):>12} {fmt(r.baseline):>12} "
                     f"{gain:>8}")
    return "\n".join(lines)


def series_rows(args: argparse.Namespace, ours_net: SliceScoreNet, base_net: nn.Module,
                notes: list[str]) -> list[Row]:
    """Rows of the end-to-end figures on a generated DICOM series (notes added to ``notes``)."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bpr-bench-") as tmp:
        folder, start = Path(tmp) / "series", time.perf_counter()
        volume = make_series(args.source, args.slices, folder)
        files = sorted(folder.iterdir())
        notes.append(f"series: {len(files)} files {volume.hu.shape[1]}×{volume.hu.shape[2]} at "
                     f"{volume.pixel_spacing_mm[0]:.3f} mm from {args.source.name}, "
                     f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB, generated in "
                     f"{time.perf_counter() - start:.1f} s")
        meta = ModelMeta(version="bench", channels=list(STAGE_CHANNELS))
        ours = BodyPartRegressor(ours_net, meta)
        # Same interface (n, 1, S, S) -> (n,); the cast only satisfies the annotation.
        base = BodyPartRegressor(cast(SliceScoreNet, base_net), meta)
        n = len(files)
        # ours and the floor take a second or less, so they run three times per round
        t = interleaved_medians({
            "ours": (lambda: pipeline_seconds(folder, ours, Path(tmp) / "ours.json"), 3),
            "base": (lambda: pipeline_seconds(folder, base, Path(tmp) / "base.json"), 1),
            "read": (lambda: {"total": read_seconds(files)}, 3),
            "floor": (lambda: {"total": dcmread_ms(files, True) * n / 1e3}, 3),
        }, args.repeats)
        floor = t["floor"]["total"]
        rows += [Row(f"predict {n} slices: {s} [VGG16]", "s", t["ours"][s], t["base"][s])
                 for s in (*STAGES, "total")]
        rows += [
            Row(f"read {n} slices to HU [pydicom floor]", "s", t["read"]["total"], floor),
            Row(f"predict {n} slices, total [pydicom floor]", "s", t["ours"]["total"], floor),
            Row("pydicom dcmread, header only", "ms/file", dcmread_ms(files, False)),
            Row("pydicom dcmread + pixel_array", "ms/file", floor / n * 1e3),
        ]
        imports = ("import torch, pydicom, bpr.cli, model.scoring.inference, model.reading.load,"
                   " model.cli.output, model.interpretation.analysis")
        rows.append(Row("CLI interpreter start + imports", "s",
                        subprocess_seconds([sys.executable, "-c", imports], args.repeats)))
        if DEFAULT_WEIGHTS.exists() and DEFAULT_META.exists():
            # the command users run: the node's commands are registered too
            cli = [sys.executable, "-m", "bpr", "predict", str(folder),
                   "--out", str(Path(tmp) / "cli.json"), "--threads", str(args.threads)]
            rows.append(Row("bpr predict CLI (subprocess), total", "s",
                            subprocess_seconds(cli, args.repeats)))
            out = Path(tmp) / "rss.json"
            rows.append(Row("peak RSS of bpr predict [whole volume held]", "MB",
                            peak_rss_mb("streamed", folder, out, args.threads),
                            peak_rss_mb("whole", folder, out, args.threads)))
        else:
            notes.append(f"bpr predict CLI skipped: no shipped model at {DEFAULT_WEIGHTS}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) the report; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=300, help="slices of the DICOM series")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="NIfTI to build from")
    p.add_argument("--json", type=Path, help="also save the report as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = hardware()
    print(f"CPU: {hw['cpu']} | cores {hw['cores']} (usable {hw['usable_cores']}) | "
          f"load {hw['load_avg_1min']:.2f} | torch {hw['torch']}, {hw['torch_threads']} threads")

    ours_net, base_net = SliceScoreNet().eval(), VGG16Baseline().eval()
    batch = torch.rand(INFERENCE_BATCH, 1, preprocess.INPUT_SIZE, preprocess.INPUT_SIZE) * 2 - 1

    def throughput(net: Callable[[torch.Tensor], torch.Tensor]) -> float:
        with torch.inference_mode():
            return len(batch) / median_seconds(lambda: net(batch), args.repeats)

    plain = throughput(ours_net)
    rows = [
        Row(f"network, batch {len(batch)} [VGG16]", "slices/s", plain,
            throughput(base_net), higher_is_better=True),
        Row("network as scored (oneDNN) [as trained]", "slices/s",
            throughput(ScoringNet(ours_net)), plain, higher_is_better=True),
        Row("parameters [VGG16]", "count", count_parameters(ours_net),
            count_parameters(base_net)),
        Row("weights file [VGG16]", "MB", weight_mb(ours_net), weight_mb(base_net)),
    ]
    notes: list[str] = []
    rows += series_rows(args, ours_net, base_net, notes)
    print(render(rows))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        report = {"hardware": hw, "settings": {k: str(v) if isinstance(v, Path) else v
                                             for k, v in vars(args).items()},
                  "rows": [{**asdict(r), "gain": r.gain} for r in rows], "notes": notes}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
