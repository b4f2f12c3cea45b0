"""The ``tweakline`` command line (an entry point: it may use every layer below it)."""
