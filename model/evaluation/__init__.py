"""Evaluation against anatomical landmarks: landmark rules, metrics, the reference table and
the calibration stored with the weights."""
