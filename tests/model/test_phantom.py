"""Synthetic whole-body CT from the ICRP phantoms: plausible HU, anatomy feet → head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.training.phantom import GROUP, organ_hu_table, synthetic_volumes


def test_organ_hu_table_follows_density(shared_data: Path) -> None:
    table = organ_hu_table(shared_data / "phantoms" / "icrp_am_organs.csv")
    names = json.loads((shared_data / "phantoms" / "icrp_am.json").read_text())
    by_name = {v.lower(): float(table[int(k)]) for k, v in names.items()}
    lung = by_name["lung, left, tissue"]
    assert table[0] == -999  # air at 0.001 g/cm³
    assert -750 < lung < -500
    assert any(hu > 600 for n, hu in by_name.items() if "cortical" in n)
    assert any(-120 < hu < -80 for n, hu in by_name.items() if "adipose" in n)


def test_variants_differ_and_keep_anatomy_order(shared_data: Path) -> None:
    vols = synthetic_volumes(shared_data / "phantoms", variants=2, seed=3)
    assert [v.group for v in vols] == [GROUP] * 4
    a, b = vols[0], vols[1]
    assert a.slices.shape == b.slices.shape and not np.array_equal(a.slices, b.slices)
    assert a.z_mm[-1] != b.z_mm[-1]  # each variant has its own body height
    # Lungs (dark, −600 HU ≈ −0.52) appear only in the upper part of the body.
    lungish = ((a.slices > -0.7) & (a.slices < -0.35)).sum(axis=(1, 2))
    peak = int(np.argmax(lungish)) / len(lungish)
    assert 0.6 < peak < 0.9
    again = synthetic_volumes(shared_data / "phantoms", variants=2, seed=3)
    assert np.array_equal(again[0].slices, a.slices)


def test_variants_are_anchored_by_the_same_rules_as_real_ct(shared_data: Path) -> None:
    vols = synthetic_volumes(shared_data / "phantoms", variants=1, seed=0)
    for v in vols:
        names = v.anchors.names
        assert {"femoral_head_top", "iliac_crest_top", "lung_bottom", "lung_top"} <= set(names)
        # feet → head, on the variant's own stretched z axis
        assert list(names).index("femoral_head_top") < list(names).index("lung_top")
        assert np.all(np.diff(v.anchors.z_mm) > 0)
        assert np.all(v.z_mm[v.anchors.slice_index] == np.sort(v.z_mm[v.anchors.slice_index]))
