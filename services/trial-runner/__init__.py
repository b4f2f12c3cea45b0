"""The trial-runner service: datasets, estimators, cross-validation, metrics and artifacts."""
