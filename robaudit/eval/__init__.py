"""Evaluation: metrics on predictions, statistics, and the runners that produce results."""
