"""Interpreting a score curve: cleaning, sanity checks, body regions and the DICOM term."""
