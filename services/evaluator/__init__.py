"""The evaluator service: refit and test-split scoring, and the promotion gate."""
