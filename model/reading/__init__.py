"""Reading CT: DICOM and NIfTI files into :class:`~model.reading.volume.CTVolume` (HU slices
feet → head), with the rules for hostile files that the node shares through :mod:`model.api`."""
