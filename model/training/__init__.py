"""Self-supervised training from the slice order of unlabeled CT (losses, sampling,
augmentation, data sets, the training loop and the export of shipped weights)."""
