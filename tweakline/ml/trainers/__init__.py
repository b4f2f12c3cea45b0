"""Trainers: the user's own training code (a callable in the repository, or a command).

The platform keeps the evaluation: it gives the trainer the training rows (and rows to predict),
scores the predictions itself, and never hands over the test split. The trainer runs in a
separate, scrubbed process (:mod:`.sandbox`): no bus connection, no ``TWEAKLINE_*`` environment,
no inherited file descriptors. Kinds are plug-ins (:mod:`.kinds`, registry by name). See
``docs/trainers.md``.
"""

from importlib import import_module
from typing import Any

# Lazy: the trainer process imports tweakline.ml.trainers.child, and must not pay for
# scikit-learn (tweakline.ml.training) before the user's code starts.
_WHERE = {
    "TrainContext": "context",
    "TrialPruned": "context",
    "KINDS": "kinds",
    "TrainerKind": "kinds",
    "check_trainer": "kinds",
    "kind_of": "kinds",
    "register_kind": "kinds",
    "TrainerError": "sandbox",
    "TrainerJob": "sandbox",
    "TrainerResult": "sandbox",
    "run_trainer": "sandbox",
    "FixedPredictions": "trial",
    "code_dir_of": "trial",
    "refit_trainer": "trial",
    "run_trainer_trial": "trial",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"tweakline.ml.trainers.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tweakline.ml.trainers' has no attribute {name!r}")


__all__ = [
    "KINDS",
    "FixedPredictions",
    "TrainContext",
    "TrainerError",
    "TrainerJob",
    "TrainerKind",
    "TrainerResult",
    "TrialPruned",
    "check_trainer",
    "code_dir_of",
    "kind_of",
    "refit_trainer",
    "register_kind",
    "run_trainer",
    "run_trainer_trial",
]
