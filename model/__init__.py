"""Body part regression: map every axial CT slice to a body-height score.

The package is self-contained and never imports :mod:`dicom_node`. The one call the node
makes is :func:`model.api.analyze_series` on the files of a series.
"""

__version__ = "0.1.0"
