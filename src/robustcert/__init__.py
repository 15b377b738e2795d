"""robustcert: certified defenses for PyTorch classifiers."""

__version__ = "0.1.0"
