"""tweakline: hyperparameter tuning for scikit-learn models as part of CI/CD."""

__version__ = "0.1.0"
