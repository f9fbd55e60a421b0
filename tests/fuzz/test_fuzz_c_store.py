"""Hostile datasets sent to a running node as real C-STOREs, byte for byte.

Damaged datasets (:mod:`tests.fuzz.generators`, file meta kept so that pynetdicom can send
them) go out from :class:`tests.fuzz.pdu.StoreClient`: every one gets a response, success
means exactly one stored and indexed file, and anything else is a failure status that is
neither "out of resources" (0xA700, which tells the sender to retry forever) nor pynetdicom's
"handler raised" (0xC211). ``BPR_SOAK`` multiplies the inputs as in
:mod:`tests.fuzz.generators`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from pynetdicom import _config

from tests.figures import Report
from tests.fuzz.damage import Garbage, Recipe, encode
from tests.fuzz.generators import SOAK, SliceSpec, ct_slice
from tests.fuzz.pdu import (
    MISLEADING,
    RunningNode,
    StoreClient,
    start_node,
    wire_inputs,
)
from tests.fuzz.strategies import fuzz_settings

# Hostile values make pydicom warn on almost every input; that is expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
OUTCOMES: Counter[str] = Counter()
#: Hostile datasets sent as C-STOREs in the CI run (× BPR_SOAK).
STORE_EXAMPLES = 120 * SOAK


@pytest.fixture(scope="module")
def store_client(tmp_path_factory: pytest.TempPathFactory, quiet_logs: None
                 ) -> Iterator[tuple[RunningNode, StoreClient, Path]]:
    """A second node (its storage fills up) and a client sending raw dataset bytes."""
    made = start_node(tmp_path_factory.mktemp("store-node"))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    # Sent without decoding: the node must see the damaged bytes, not pydicom's re-encoding.
    _config.STORE_SEND_CHUNKED_DATASET = True
    client = StoreClient(made.port)
    try:
        yield made, client, tmp_path_factory.mktemp("store-inputs")
    finally:
        client.close()
        _config.STORE_SEND_CHUNKED_DATASET = previous
        made.node.stop()


@fuzz_settings(STORE_EXAMPLES)
@given(recipe=wire_inputs)
def test_fuzz_c_store_over_the_wire(recipe: Recipe | Garbage,
                                    store_client: tuple[RunningNode, StoreClient, Path]) -> None:
    """Success means one more stored, indexed file; anything else is an honest failure."""
    made, client, inputs = store_client
    path = inputs / "input.dcm"
    # A fresh valid CT slice (its own SOP Instance UID) to damage.
    path.write_bytes(encode(ct_slice(SliceSpec(size=16)), recipe, keep_meta=True))
    files_before, rows_before = len(made.stored_files()), made.instances()
    status = client.send(path)
    if status is None:
        OUTCOMES["c-store: not sendable"] += 1
        return
    files_after, rows_after = len(made.stored_files()), made.instances()
    assert files_after - files_before == rows_after - rows_before, "file without row"
    if status == 0x0000:
        assert files_after - files_before in (0, 1)  # 0: a duplicate SOP Instance UID
        OUTCOMES["c-store: stored"] += 1
        return
    assert status not in MISLEADING, f"0x{status:04X} ({MISLEADING.get(status)})"
    assert status == 0xA900 or 0xC000 <= status <= 0xCFFF or status == 0x0124, hex(status)
    assert files_after == files_before, "a refused instance was stored"
    OUTCOMES[f"c-store: refused 0x{status:04X}"] += 1


def test_store_holds_only_indexed_files(store_client: tuple[RunningNode, StoreClient, Path],
                                        report: Report) -> None:
    """Last: every file in the node's storage has its index row, nothing lies outside it."""
    made, _client, _inputs = store_client
    assert len(made.stored_files()) == made.instances(), "files and index rows disagree"
    assert made.stray_files() == [], "files written outside the storage"
    report("fuzz: C-STORE", f"inputs: {sum(OUTCOMES.values())} (configured {STORE_EXAMPLES}, "
           f"BPR_SOAK factor {SOAK}); {made.instances()} stored")
    for key, n in sorted(OUTCOMES.items()):
        report("fuzz: C-STORE", f"  {key}: {n}")
