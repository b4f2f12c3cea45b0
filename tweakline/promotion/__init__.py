"""The promotion gate and its statistics: thresholds, paired comparisons with production."""
