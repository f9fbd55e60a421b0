"""Body part regression: map every axial CT slice to a body-height score.

The package is self-contained and never imports :mod:`dicom_node`. Its wings:

* :mod:`model.reading` — DICOM and NIfTI files → :class:`~model.reading.volume.CTVolume`,
  and the rules for hostile files;
* :mod:`model.scoring` — preprocessing, the network, the regressor;
* :mod:`model.interpretation` — score cleaning, sanity checks, regions, the DICOM term, and
  the node-facing records;
* :mod:`model.training` — self-supervised training and the export of weights;
* :mod:`model.evaluation` — landmarks, metrics, the reference table and calibration;
* :mod:`model.tools` — known-region cropping, prealignment, plots;
* :mod:`model.cli` — the model's ``bpr`` commands.

The one door for the node is :mod:`model.api` (:func:`~model.api.load_model`,
:func:`~model.api.analyze_series`); importing it loads reading, scoring and interpretation
only.
"""

__version__ = "0.1.0"
