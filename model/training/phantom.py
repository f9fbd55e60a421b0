"""Synthetic whole-body CT from the ICRP 110 reference phantoms (optional training data).

The phantoms are organ-ID maps from toes to vertex, with a density per organ. They cover
the pelvis, abdomen and legs that the real training CT barely shows. HU are synthesised
from density (water = 0 HU, air = −1000 HU, bone scaled up towards measured cortical
values), then every variant gets its own body height and width scaling, blur and noise so
the network cannot key on one rendering.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from model.evaluation.bone_landmarks import MEDIAL_MAX_MM, PUBIS_MIN_AREA_CM2
from model.reading.nifti import read_nifti
from model.reading.volume import CTVolume
from model.scoring import preprocess
from model.training.anchors import find_anchors
from model.training.dataset import TrainVolume

#: Phantoms in ``<shared data>/phantoms`` (adult male, adult female).
PHANTOMS = ("icrp_am", "icrp_af")
#: Sampling group of synthetic volumes (balanced like a collection).
GROUP = "icrp_phantom"
#: Density above which a tissue is mineral bone and its HU are stretched (g/cm³).
BONE_DENSITY = 1.1
#: HU per g/cm³ above water for bone: 1000 would put cortical bone (1.92) at ~920 HU,
#: below the 1000–1500 HU seen in CT.
BONE_HU_PER_DENSITY = 1300.0
#: Sampling factor of synthetic volumes relative to a real collection of the same size.
SAMPLING_WEIGHT = 0.5
#: Adipose tissue measures about −100 HU in CT, lower than its density (0.95) suggests.
FAT_HU = -100.0
#: Organ-name prefixes (``<phantom>_organs.csv``) of the bones that give the pelvic landmarks.
FEMUR_HEAD_ORGANS = "Femora, upper half"
PELVIC_BONE_ORGANS = "Pelvis,"


def organ_ids_named(organs_csv: Path, prefix: str) -> list[int]:
    """IDs of the organs whose name starts with ``prefix``."""
    rows = csv.DictReader(organs_csv.open(newline=""))
    return [int(r["organ_id"]) for r in rows if r["organ_name"].startswith(prefix)]


def pelvic_landmarks(organ_ids: np.ndarray, organs_csv: Path, z_mm: np.ndarray,
                     spacing: tuple[float, float]) -> dict[str, float]:
    """Pelvis bottom, femoral head top and iliac crest top (z in mm) from the organ labels.

    The HU rules of :mod:`model.evaluation.bone_landmarks` misfire on the whole-body phantoms:
    the femora carry the lateral bone run down to the feet, the touching knees hold medial
    bone, and the blurred iliac body is as round as a femoral head (seed 0's six variants per
    phantom: 7 pelvis bottoms at the knees or feet, femoral head tops up to 84 mm high, one
    femoral head in the knee and its iliac crest in the thigh). The labels
    name the bones; each landmark is taken as the rule defines it on real CT: the top of the
    upper femora, the top of the pelvic bones, and the lowest slice with
    ``PUBIS_MIN_AREA_CM2`` of pelvic bone within ``MEDIAL_MAX_MM`` of the body midline.
    """
    femur = np.isin(organ_ids, organ_ids_named(organs_csv, FEMUR_HEAD_ORGANS))
    pelvis = np.isin(organ_ids, organ_ids_named(organs_csv, PELVIC_BONE_ORGANS))
    body = organ_ids > 0
    cols = np.arange(organ_ids.shape[2], dtype=np.float64)
    mid = (body.sum(axis=1) @ cols) / np.maximum(body.sum(axis=(1, 2)), 1)
    medial = np.abs(cols[None, :] - mid[:, None]) * spacing[1] < MEDIAL_MAX_MM  # (n, cols)
    medial_cm2 = (pelvis & medial[:, None, :]).sum(axis=(1, 2)) * spacing[0] * spacing[1] / 100
    found = {"femoral_head_top": np.flatnonzero(femur.any(axis=(1, 2))),
             "iliac_crest_top": np.flatnonzero(pelvis.any(axis=(1, 2))),
             "pelvis_bottom": np.flatnonzero(medial_cm2 >= PUBIS_MIN_AREA_CM2)}
    return {name: float(z_mm[k[0] if name == "pelvis_bottom" else k[-1]])
            for name, k in found.items() if k.size}


def organ_hu_table(organs_csv: Path) -> np.ndarray:
    """HU for every organ ID (index) from the phantom's organ table."""
    rows = list(csv.DictReader(organs_csv.open(newline="")))
    table = np.full(256, -1000.0, dtype=np.float32)
    for row in rows:
        rho = float(row["density_g_cm3"])
        if "adipose" in row["tissue_name"].lower():
            hu = FAT_HU
        elif rho > BONE_DENSITY:
            hu = BONE_HU_PER_DENSITY * (rho - 1.0)
        else:
            hu = 1000.0 * (rho - 1.0)
        table[int(row["organ_id"])] = hu
    return table


def synthetic_volumes(phantom_dir: Path, variants: int, seed: int = 0) -> list[TrainVolume]:
    """``variants`` preprocessed synthetic CTs per phantom, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[TrainVolume] = []
    for name in PHANTOMS:
        ids = read_nifti(phantom_dir / f"{name}.nii.gz")
        organs_csv = phantom_dir / f"{name}_organs.csv"
        table = organ_hu_table(organs_csv)
        organ_ids = ids.hu.astype(np.uint8)
        for v in range(variants):
            hu = table[organ_ids]
            # Scanner resolution and noise; sigma in native pixels (~2 mm).
            hu = ndimage.gaussian_filter(hu, sigma=(0, *(rng.uniform(0.4, 1.2),) * 2))
            hu += rng.normal(0.0, rng.uniform(5.0, 40.0), size=hu.shape).astype(np.float32)
            height = rng.uniform(0.88, 1.12)  # taller or shorter patient
            width = rng.uniform(0.9, 1.1)
            spacing = (ids.pixel_spacing_mm[0] * width, ids.pixel_spacing_mm[1] * width)
            slices = preprocess.preprocess_slices(hu, spacing).astype(np.float16)
            z_mm = ids.z_mm[0] + (ids.z_mm - ids.z_mm[0]) * height
            # The HU rules of real CT find the lungs; the labels the pelvic bones.
            pelvis = pelvic_landmarks(organ_ids, organs_csv, z_mm, spacing)
            anchors = find_anchors(CTVolume(hu, z_mm, spacing, f"{name}-synthetic-{v}"),
                                   pelvis)
            out.append(TrainVolume(f"{name}-synthetic-{v}", slices, z_mm, GROUP,
                                   weight=SAMPLING_WEIGHT, anchors=anchors))
    return out
