"""Scoring slices: preprocessing, the network and the regressor that scores a volume."""
