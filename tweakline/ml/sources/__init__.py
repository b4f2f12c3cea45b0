"""Dataset sources: one plug-in module per URI scheme, each owning its rules, and their registry.

The order of the imports below is the order sources are listed to users (``sklearn:``, ``csv:``,
``parquet:``, ``https:``, ``object:``). A new scheme is one module here with a
:class:`~tweakline.ml.sources.base.DatasetLoader` subclass decorated with
:func:`~tweakline.ml.sources.base.register_source`, and one import line below.
"""

from __future__ import annotations

# The registration order is the order users read the sources in.
# isort: off
import tweakline.ml.sources.bundled
import tweakline.ml.sources.csv_file
import tweakline.ml.sources.parquet_file
import tweakline.ml.sources.https_url
import tweakline.ml.sources.uploaded  # noqa: F401

# isort: on
from tweakline.ml.sources.base import (
    LOADERS,
    Dataset,
    DatasetLoader,
    Task,
    loader_for,
    location_of,
    register_source,
    source_problems,
    unknown_source,
)

__all__ = [
    "LOADERS",
    "Dataset",
    "DatasetLoader",
    "Task",
    "loader_for",
    "location_of",
    "register_source",
    "source_problems",
    "unknown_source",
]
