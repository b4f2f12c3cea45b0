"""Benchmarks of the tweakline platform (``python -m bench.platform``); not part of the installed package."""
