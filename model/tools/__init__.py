"""Tools built on the scores: known-region cropping, prealignment and score-curve plots."""
