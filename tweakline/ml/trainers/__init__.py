"""Trainers: the user's own training code (a callable in the repository, or a command).

The platform keeps the evaluation: it gives the trainer the training rows (and rows to predict),
scores the predictions itself, and never hands over the test split. The trainer runs in a
separate, scrubbed process (:mod:`.sandbox`): no bus connection, no ``TWEAKLINE_*`` environment,
no inherited file descriptors. Kinds are plug-ins (:mod:`.kinds`, registry by name). See
``docs/trainers.md``.
"""

from tweakline.ml.trainers.context import TrainContext, TrialPruned
from tweakline.ml.trainers.kinds import KINDS, TrainerKind, check_trainer, kind_of, register_kind
from tweakline.ml.trainers.sandbox import TrainerError, TrainerJob, TrainerResult, run_trainer
from tweakline.ml.trainers.trial import FixedPredictions, code_dir_of, refit_trainer, run_trainer_trial

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
