"""robaudit: adversarial-robustness audits of transfer-learned medical image classifiers."""

__version__ = "0.4.0"
