"""The scheduler service: experiment intake, search strategies, trial dispatch and experiment state."""
