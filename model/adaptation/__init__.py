"""Self-supervised adaptation of the model to the CT a site sends (``bpr adapt``).

The model learns from slice order alone, so the series a node receives are training data
that needs no label. :mod:`~model.adaptation.corpus` chooses the series (sane, one per patient
and region) and splits off a hold-out by patient; :mod:`~model.adaptation.guards` measures a
model on the hold-out without labels and decides whether a candidate may replace the active
model; :mod:`~model.adaptation.run` fine-tunes, measures both models and writes the candidate
and its ``report.json``.
"""
