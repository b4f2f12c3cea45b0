"""The client side of the bus: building a submission and following an experiment's events."""
