"""The machine-learning domain: datasets and splits, the estimator allow-list, metrics, cross-validated
training and skops artifacts. No bus in here: every function works on plain data."""
