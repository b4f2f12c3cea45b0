"""Text (categorical) feature columns encoded inside the model's own pipeline.

A table's text columns (:mod:`tweakline.ml.tables`) are one-hot encoded by a first pipeline
step, :data:`ENCODER_STEP`, a :class:`~sklearn.compose.ColumnTransformer` that encodes the text
columns and passes the numeric ones through unchanged. Because the encoder is part of the fitted
model, the skops artifact carries the categories it learnt: the evaluator's refit, the deployed
model and ``/predict`` encode exactly as the trials did, and the model server learns which inputs
are text from the model itself (:func:`text_columns`). A label never seen in training encodes as
all zeros (``handle_unknown="ignore"``) rather than failing a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

ENCODER_STEP = "tweakline_encoding"
"""Name of the encoding step in the pipeline (never a name ``make_pipeline`` gives a user's step)."""

_TEXT = "text"


def with_encoding(estimator: Any, categorical: Sequence[int]) -> Any:
    """``estimator`` (or pipeline) preceded by the one-hot encoding of the text columns ``categorical``.

    With no text column the estimator is returned unchanged, so an all-numeric model is exactly
    what it always was. Parameter names stay valid: the user's steps keep their names.
    """
    if not categorical:
        return estimator
    encoder = ColumnTransformer(
        [(_TEXT, OneHotEncoder(handle_unknown="ignore"), list(categorical))],
        remainder="passthrough",
        sparse_threshold=0.0,  # dense: scalers centre it and every estimator accepts it
    )
    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [(type(estimator).__name__.lower(), estimator)]
    return Pipeline([(ENCODER_STEP, encoder), *steps])


def text_columns(model: Any) -> tuple[int, ...]:
    """The positions of the text input columns a fitted model encodes (empty: every input is a number)."""
    if not isinstance(model, Pipeline) or not model.steps or model.steps[0][0] != ENCODER_STEP:
        return ()
    encoder = model.steps[0][1]
    for name, _, columns in getattr(encoder, "transformers", []):
        if name == _TEXT:
            return tuple(int(c) for c in columns)
    return ()
