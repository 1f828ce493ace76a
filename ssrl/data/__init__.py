"""Data: Kaldi-style folders, corpus preparation, the built-in corpus, wave and feature stores,
augmentation, and the per-step crops the training loops read."""
