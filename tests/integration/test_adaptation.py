"""A simulated site: torso CT sent to the real node with DCMTK, then adapted on.

Six chest, abdomen and pelvis volumes of ``../shared/data`` (six patients) are written as
DICOM and sent with ``storescu`` to ``bpr serve``, which analyzes them. The scheduled check then
starts ``bpr adapt --config``; ``bpr models``, ``bpr reprocess --since`` and a SIGKILL in the
middle of a run are exercised as an operator would, on the same index and storage.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.adaptation import AdaptationSchedule, adaptation_series
from dicom_node.config import NodeConfig, load_config
from dicom_node.index import Index, ModelVersion, Series
from dicom_node.model_versions import analyses_since_last_run
from dicom_node.storage import FileStore
from model.api import weights_version
from tests.node_harness import BPR, bpr, free_port, simulated_site, wait_for, write_config

#: Six torso volumes of six patients: chest, chest-abdomen and abdomen-pelvis.
VOLUMES = ("lidc_0002", "lidc_0003", "lidc_0314", "nsclc_radiogenomics_r168", "crlm_ct_1006",
           "pelvicref_003")
#: A run small enough for CI: three steps, half the patients held out.
ADAPTATION = {"steps": 3, "threads": 1, "min_patients": 4, "holdout_fraction": 0.5,
              "min_new_series": 6, "validate_on_shared_data": False, "memory_limit_mb": 6144}

pytestmark = [pytest.mark.usefixtures("shared_data"), pytest.mark.requires_tool("storescu")]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NodeConfig]:
    # half the pixels per axis: the same anatomy at 6 mm, a quarter of the time to send
    config_path = simulated_site(tmp_path_factory.mktemp("adapt-site"), VOLUMES,
                                 adaptation=ADAPTATION, pixel_step=2)
    return config_path, load_config(config_path)


def _versions(config_path: Path) -> list[dict[str, object]]:
    listed = bpr("models", "--config", str(config_path), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, object]] = json.loads(listed.stdout)
    return rows


def _series_versions(config: NodeConfig) -> set[str | None]:
    index = Index(config.database.url)
    with index.session() as session:
        versions = set(session.scalars(select(Series.model_version)
                                       .where(Series.is_derived.is_(False))))
    index.close()
    return versions


def test_the_node_offers_its_analyzed_series_one_per_patient(node: tuple[Path, NodeConfig]
                                                             ) -> None:
    _path, config = node
    index = Index(config.database.url)
    offered = adaptation_series(index, FileStore(config.storage.root), 100)
    with index.session() as session:
        assert analyses_since_last_run(session) == len(VOLUMES)
    index.close()
    assert len(offered) == len(VOLUMES)
    assert len({s.patient for s in offered}) == len(VOLUMES)
    assert all(p.is_file() for s in offered for p in s.paths)


def _state(config: NodeConfig) -> tuple[list[tuple[str, bool]], list[tuple[str, str]], int]:
    index = Index(config.database.url)
    with index.session() as session:
        versions = [(m.version, m.active) for m in session.scalars(select(ModelVersion))]
        series = [(s.series_instance_uid, s.state.value) for s in session.scalars(select(Series))]
    index.close()
    files = sum(1 for p in config.storage.root.rglob("*.dcm"))
    return versions, series, files


def test_a_run_killed_midway_loses_nothing(node: tuple[Path, NodeConfig], tmp_path: Path
                                           ) -> None:
    config_path, config = node
    before = _state(config)
    run_dir = tmp_path / "killed-run"
    run = subprocess.Popen([*BPR, "adapt", "--config", str(config_path), "--out", str(run_dir),
                            "--steps", "2000"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        # the history appears after the first epoch; the checkpoint folder when training starts
        wait_for(lambda: (run_dir / "training").is_dir(), 300, "training to start")
        time.sleep(2)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    after = _state(config)
    assert after == before  # no version recorded or activated, every series and file kept
    assert not (config.storage.root / "models").exists() or not [
        p for p in (config.storage.root / "models").iterdir() if p.name != "runs"]


def test_adapt_records_activates_and_reprocess_and_rollback_follow(
        node: tuple[Path, NodeConfig]) -> None:
    config_path, config = node
    base = weights_version(None)
    index = Index(config.database.url)
    schedule = AdaptationSchedule(index, FileStore(config.storage.root), config, config_path)
    # six series analyzed, six needed: the scheduled check starts `bpr adapt --config`
    assert schedule.run_if_due() == 0
    logs = list((config.storage.root / "models" / "runs").glob("adapt-*.log"))
    assert len(logs) == 1
    run_log = logs[0].read_text()
    assert "niceness 19" in run_log and "6144 MiB" in run_log, run_log[-3000:]
    assert schedule.run_if_due() is None  # nothing analyzed since that run
    index.close()
    rows = _versions(config_path)
    assert rows[0]["version"] == base
    candidate = rows[-1]
    assert candidate["parent"] == base and candidate["series"] == len(VOLUMES)
    guards = candidate["guards"]
    assert isinstance(guards, dict) and guards["holdout"]["series"] == 3
    assert "monotone_fraction" in guards["guards"]
    # three small steps from the shipped model cannot make it worse beyond noise
    assert candidate["promoted"] is True and candidate["active"] is True, candidate["reason"]
    version = str(candidate["version"])
    installed = config.storage.root / "models" / version
    assert (installed / "bpr_model.pt").is_file() and (installed / "bpr_model.json").is_file()
    assert not list((config.storage.root / "models").glob(".*partial"))

    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    again = bpr("reprocess", "--config", str(config_path), "--since", today, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": DONE") == len(VOLUMES)
    assert _series_versions(config) == {version}
    # nothing is outdated any more
    assert bpr("reprocess", "--config", str(config_path), "--since", today).stdout == ""

    back = bpr("models", "--config", str(config_path), "rollback")
    assert back.returncode == 0 and base in back.stdout
    assert bpr("reprocess", "--config", str(config_path), "--since", today,
               timeout=600).returncode == 0
    assert _series_versions(config) == {base}
    assert bpr("models", "--config", str(config_path), "rollback").returncode == 1


def test_stopping_the_node_stops_a_run_and_records_nothing(node: tuple[Path, NodeConfig]
                                                          ) -> None:
    config_path, config = node
    index = Index(config.database.url)
    schedule = AdaptationSchedule(index, FileStore(config.storage.root), config, config_path)
    before = _state(config)
    ended: list[int | None] = []
    # the reprocessing above analyzed six series again: a run is due
    runner = threading.Thread(target=lambda: ended.append(schedule.run_if_due()))
    runner.start()
    wait_for(lambda: schedule._process is not None, 60, "the run to start")
    time.sleep(3)
    schedule.stop()
    runner.join(timeout=60)
    assert ended and ended[0] is not None and ended[0] < 0  # ended by a signal
    assert schedule.run_if_due() is None  # a stopped schedule starts nothing
    assert _state(config) == before
    index.close()


def test_a_candidate_that_was_not_promoted_needs_force(node: tuple[Path, NodeConfig]) -> None:
    config_path, config = node
    index = Index(config.database.url)
    with index.session() as session:
        session.add(ModelVersion(version="ssbr-000000000000", parent_version="x",
                                 created_at=0.0, weights_path=None, promoted=False,
                                 reason="worse beyond noise: monotone_fraction"))
    index.close()
    refused = bpr("models", "--config", str(config_path), "activate", "ssbr-000000000000")
    assert refused.returncode == 1 and "not promoted" in refused.stderr
    unknown = bpr("models", "--config", str(config_path), "activate", "ssbr-nope")
    assert unknown.returncode == 1 and "no model version" in unknown.stderr


def test_too_few_patients_end_the_run_with_a_clear_message(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, free_port(), adaptation=ADAPTATION)
    ran = bpr("adapt", "--config", str(config_path))
    assert ran.returncode == 2
    assert "0 patient(s) with a qualifying series; at least 4" in ran.stderr
