"""Attacks: universal perturbations (one file per method), random controls, per-sample backends."""
