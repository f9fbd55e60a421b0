"""Reading CT: DICOM and NIfTI files into :class:`~model.reading.volume.CTVolume` (HU slices
feet → head, scanner padding read as air by :mod:`model.reading.padding`), with the rules for
hostile files that the node shares through :mod:`model.api`."""
