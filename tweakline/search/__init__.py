"""Search plug-ins: the space as Optuna distributions, search algorithms and pruners (each with its rules)."""
