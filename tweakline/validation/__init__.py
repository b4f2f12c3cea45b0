"""Everything checked before an experiment starts: the tweak file's shape, then what needs scikit-learn."""

from __future__ import annotations

from pathlib import Path

from tweakline.errors import InvalidTweakFileError
from tweakline.proto.tweakfile import TweakFile
from tweakline.validation.loading import load_tweak_file


def resolve_paths(tweak: TweakFile, base_dir: Path) -> TweakFile:
    """Make a ``csv:`` source absolute (relative paths are relative to the tweak file's folder)."""
    source = tweak.spec.dataset.source
    if not source.startswith("csv:"):
        return tweak
    path = Path(source[4:]).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    dataset = tweak.spec.dataset.model_copy(update={"source": f"csv:{path}"})
    spec = tweak.spec.model_copy(update={"dataset": dataset})
    return tweak.model_copy(update={"spec": spec})


def validate_tweak_file(path: str | Path, allowed_estimators: list[str]) -> TweakFile:
    """Load and fully check a tweak file; raise :class:`InvalidTweakFileError` listing every problem."""
    from tweakline.ml.estimators import check_spec  # imports scikit-learn: only when needed

    path = Path(path)
    tweak = resolve_paths(load_tweak_file(path), path.resolve().parent)
    from tweakline.search.algorithms import check_search

    problems = check_spec(tweak.spec, allowed_estimators, path.resolve().parent) + check_search(tweak.spec)
    if problems:
        raise InvalidTweakFileError(str(path), problems)
    return tweak
