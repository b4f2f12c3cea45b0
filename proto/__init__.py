"""tweakline's contracts: the tweak file, the bus messages, subjects, streams, buckets and permissions.

Services import names from here; no subject or bucket name is spelled anywhere else.
"""

from tweakline.proto.messages import (
    ArtifactRef,
    DeadLetter,
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    ExperimentSubmitted,
    GateCheck,
    ReleaseHistory,
    ReleaseRevision,
    Source,
    TrialCompleted,
    TrialControl,
    TrialProgress,
    TrialRecord,
    TrialRequested,
    TrialStatus,
    msg_id,
    trial_id,
)
from tweakline.proto.subjects import Bucket, Consumer, Stream, Subject, subject_for
from tweakline.proto.tweakfile import ExperimentSpec, TweakFile

__all__ = [
    "ArtifactRef",
    "Bucket",
    "Consumer",
    "DeadLetter",
    "Decision",
    "DeploymentCompleted",
    "DeploymentStatus",
    "EvaluationCompleted",
    "ExperimentCompleted",
    "ExperimentSpec",
    "ExperimentState",
    "ExperimentStatus",
    "ExperimentSubmitted",
    "GateCheck",
    "ReleaseHistory",
    "ReleaseRevision",
    "Source",
    "Stream",
    "Subject",
    "TrialCompleted",
    "TrialControl",
    "TrialProgress",
    "TrialRecord",
    "TrialRequested",
    "TrialStatus",
    "TweakFile",
    "msg_id",
    "subject_for",
    "trial_id",
]
