"""The index database goes away while a sender is storing: nothing acknowledged is lost.

``bpr serve`` runs on PostgreSQL. A pynetdicom sender stores two real CT series instance by
instance over one association; after a third of them the PostgreSQL server is stopped (as a
restart or crash of the database would), a few seconds later started again. During the outage
every C-STORE must be answered with a failure status (0xA700) and none acknowledged without a
committed row; the node must stay up and store again by itself once the database is back. A
full resend then stores everything exactly once, and both series complete (analysis and SR).
The figures (stores refused, lost, time to recover) go to the terminal summary and to
``python -m benchmarks.robustness_report``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_node.index import Index, Instance, Series
from tests.figures import Report
from tests.node_harness import (
    analyzed_count,
    free_port,
    real_ct_series,
    running_node,
    wait_for,
    write_config,
)
from tests.postgres_cluster import fresh_database, postgres_server

pytestmark = [pytest.mark.usefixtures("shared_data")]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
#: Seconds the database stays down.
OUTAGE_S = 5.0


def _store(assoc: Association, path: Path) -> int:
    status = assoc.send_c_store(dcmread(path))
    return int(status.Status) if "Status" in status else -1


def test_a_database_outage_loses_nothing_and_heals_itself(tmp_path: Path,
                                                          report: Report) -> None:
    files = (real_ct_series(tmp_path / "a", "openkbp_pt_15", pixel_step=4,
                            slices=slice(40, 64), patient_id="OUTAGE-1")
             + real_ct_series(tmp_path / "b", "openkbp_pt_2", pixel_step=4,
                              slices=slice(40, 64), patient_id="OUTAGE-2"))
    with postgres_server() as server, fresh_database(server.url) as url:
        port = free_port()
        (tmp_path / "node").mkdir()
        config = write_config(tmp_path / "node", port, quiet_seconds=2.0,
                              database={"url": url}, series={"sweep_seconds": 1.0})
        index = Index(url)
        with running_node(config, port) as node:
            ae = AE("STORESCU")
            ae.add_requested_context(CTImageStorage)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            assoc = ae.associate("127.0.0.1", port, ae_title="BPR_NODE")
            assert assoc.is_established
            acknowledged, refused = set(), 0
            third = len(files) // 3
            for path in files[:third]:
                assert _store(assoc, path) == SUCCESS
                acknowledged.add(path)
            server.stop()
            outage_started = time.monotonic()
            # the sender keeps trying the middle third for the whole outage (≥ 5 s: longer
            # than the quiet time, so the first series' completion timer fires meanwhile)
            while refused < third or time.monotonic() - outage_started < OUTAGE_S:
                status = _store(assoc, files[third + refused % third])
                assert status == OUT_OF_RESOURCES, f"0x{status:04X} during the outage"
                refused += 1
            assert node.process.poll() is None  # the node stays up
            server.start()
            restarted = time.monotonic()
            # the sender retries the instance it was refused until the node takes it again
            retry = files[third]
            while _store(assoc, retry) != SUCCESS:
                assert time.monotonic() - restarted < 60, "the node did not recover"
                time.sleep(0.2)
            recovered_after = time.monotonic() - restarted
            acknowledged.add(retry)
            for path in files:  # a full resend: duplicates are acknowledged, kept once
                assert _store(assoc, path) == SUCCESS
                acknowledged.add(path)
            assoc.release()

            sops = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}

            wait_for(lambda: analyzed_count(index) == 2, 120,
                     "both series analyzed after the outage")
            with index.session() as session:
                stored = session.scalars(select(Instance).where(
                    Instance.sop_instance_uid.in_(sops))).all()
                srs = session.scalar(select(func.count(Series.id)).where(
                    Series.is_derived.is_(True)))
                every_row = session.scalar(select(func.count(Instance.id)))
            storage = config.parent / "storage"
            lost = [i for i in stored if not (storage / i.path).is_file()]
            # a refused store leaves no file behind (the instances and the two SRs)
            assert len(list(storage.rglob("*.dcm"))) == every_row
            assert len(stored) == len(files) == len({i.sop_instance_uid for i in stored})
            assert lost == [] and srs == 2
        index.close()
    report("database outage", f"PostgreSQL stopped for {restarted - outage_started:.1f} s "
           f"mid-series: {refused} stores refused with 0xA700, 0 acknowledged without a "
           f"committed row, lost 0 of {len(files)}; stores again {recovered_after:.1f} s after "
           "the database is back; full resend stored each instance once, both series analyzed")
