"""Evaluation: embeddings, trial scoring, EER/minDCF, bootstrap confidence intervals, and the
classical statistics baseline."""
