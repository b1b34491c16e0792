"""Scoring, evaluating a model, the comparison report, adapter retention."""
