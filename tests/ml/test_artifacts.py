"""skops artifacts: round trips, integrity check, trusted types."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tweakline.errors import ArtifactError
from tweakline.ml import artifacts
from tweakline.ml.artifacts import TRUSTED_TYPES, dump_model, load_model

X, Y = load_iris(return_X_y=True)


@pytest.mark.parametrize(
    "model",
    [
        make_pipeline(StandardScaler(), SVC(C=3.0)),
        RandomForestClassifier(n_estimators=5, random_state=0),
        HistGradientBoostingClassifier(max_iter=5, random_state=0),
    ],
    ids=["pipeline-svc", "random-forest", "hist-gradient-boosting"],
)
def test_round_trip_gives_identical_predictions(model: object) -> None:
    model.fit(X, Y)  # type: ignore[attr-defined]
    data, digest = dump_model(model)
    assert digest == hashlib.sha256(data).hexdigest()
    loaded = load_model(data, digest)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))  # type: ignore[attr-defined]
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_hash_is_checked_case_insensitively_but_exactly() -> None:
    data, digest = dump_model(SVC().fit(X, Y))
    assert load_model(data, digest.upper()).predict(X[:3]).tolist() == SVC().fit(X, Y).predict(X[:3]).tolist()
    with pytest.raises(ArtifactError, match="artifact hash mismatch"):
        load_model(data, "0" * 64)


def test_tampered_bytes_are_refused() -> None:
    data, digest = dump_model(SVC().fit(X, Y))
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(ArtifactError, match=f"expected sha256 {digest}.*tampered or truncated"):
        load_model(bytes(tampered), digest)
    with pytest.raises(ArtifactError, match="hash mismatch"):
        load_model(data[:-10], digest)


def _with_class(data: bytes, module: str, name: str) -> bytes:
    """A copy of a skops file whose top-level object claims another class."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            content = source.read(item)
            if item == "schema.json":
                schema = json.loads(content)
                schema["__module__"], schema["__class__"] = module, name
                content = json.dumps(schema).encode()
            target.writestr(item, content)
    return out.getvalue()


def test_untrusted_type_is_refused_even_with_a_matching_hash() -> None:
    data, _ = dump_model(StandardScaler().fit(X))
    evil = _with_class(data, "subprocess", "Popen")
    with pytest.raises(ArtifactError, match="untrusted types: subprocess.Popen; refusing to load"):
        load_model(evil, hashlib.sha256(evil).hexdigest())
    with pytest.raises(ArtifactError, match="untrusted types: subprocess.Popen"):
        load_model(evil, hashlib.sha256(evil).hexdigest(), trusted=["builtins.eval"])


def test_sklearn_types_outside_the_allow_list_need_naming() -> None:
    model = GaussianProcessClassifier(random_state=0).fit(X[:60], Y[:60])
    with pytest.raises(ArtifactError, match="not trusted for loading: .*sklearn.gaussian_process"):
        dump_model(model)
    data = sio.dumps(model)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(ArtifactError, match="untrusted types: .*sklearn.gaussian_process.kernels.RBF"):
        load_model(data, digest)
    extra = sio.get_untrusted_types(data=data)
    assert not set(extra) & TRUSTED_TYPES
    loaded = load_model(data, digest, trusted=extra)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    again, again_digest = dump_model(model, trusted=extra)
    assert again_digest == hashlib.sha256(again).hexdigest()


@pytest.mark.parametrize("trusted", [True, "sklearn.tree._tree.Tree"])
def test_trusted_must_be_a_list_of_names(trusted: object) -> None:
    data, digest = dump_model(SVC().fit(X, Y))
    with pytest.raises(ArtifactError, match="trusted must be a list of type names"):
        load_model(data, digest, trusted=trusted)  # type: ignore[arg-type]


def test_bytes_that_are_not_skops_are_refused() -> None:
    junk = b"definitely not a zip file"
    with pytest.raises(ArtifactError, match="not a readable skops artifact"):
        load_model(junk, hashlib.sha256(junk).hexdigest())


def test_the_module_never_imports_pickle() -> None:
    tree = ast.parse(Path(artifacts.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported & {"pickle", "cloudpickle", "joblib", "dill"} == set()
    assert "skops" in imported


def _printed_by(code: str) -> list[str]:
    """What ``code`` prints, word by word, run in a fresh interpreter (imports are what is measured)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_only_processes_that_handle_models_pay_for_skops_and_none_for_torch() -> None:
    # Start-up cost of every service process: importing skops imports all of scikit-learn (and
    # torch through it, when installed); the scheduler and the runners never need it.
    code = (
        "import sys\n"
        "import tweakline.scheduler.app, tweakline.trial_runner.app, tweakline.evaluator.app\n"
        "print('skops.io' in sys.modules, 'torch' in sys.modules)\n"
        "from sklearn.svm import SVC\n"
        "from tweakline.ml.artifacts import dump_model, load_model\n"
        "data, sha = dump_model(SVC().fit([[0.0], [1.0]], [0, 1]))\n"
        "load_model(data, sha)\n"
        "print('skops.io' in sys.modules, 'torch' in sys.modules)\n"
    )
    assert _printed_by(code) == ["False", "False", "True", "False"]


def test_skops_trusts_every_estimator_without_importing_them_all() -> None:
    # While skops is imported its default trusted types come from the committed list
    # (tweakline.ml.sklearn_estimators): the names listing the installed scikit-learn gives, and
    # the estimators' modules stay unimported (in a forked evaluator: ~11 MiB of its own).
    code = (
        "import pathlib, sys\n"
        "import sklearn.utils\n"
        "from tweakline.ml.artifacts import _WithoutTorch, _skops\n"
        "_skops()\n"
        "print('sklearn.gaussian_process' in sys.modules, sklearn.utils.all_estimators.__module__)\n"
        "import skops.io._trusted_types as trusted\n"
        "from skops.io._utils import get_type_name\n"
        "sys.meta_path.insert(0, _WithoutTorch())\n"
        "names = [get_type_name(c) for _, c in sklearn.utils.all_estimators() if get_type_name(c).startswith('sklearn.')]\n"
        "print(trusted.SKLEARN_ESTIMATOR_TYPE_NAMES == names, len(names) > 100)\n"
        "import tweakline.ml.sklearn_estimators as listed\n"
        "print(listed.render() == pathlib.Path(listed.__file__).read_text(encoding='utf-8'))\n"
    )
    stale = "scikit-learn changed: regenerate the list with python -m tweakline.ml.sklearn_estimators"
    assert _printed_by(code) == ["False", "sklearn.utils.discovery", "True", "True", "True"], stale


def test_another_scikit_learn_version_lists_its_own_estimators() -> None:
    code = (
        "import sys\n"
        "import tweakline.ml.sklearn_estimators as listed\n"
        "listed.SKLEARN_VERSION = '0.0'\n"
        "from tweakline.ml.artifacts import _skops\n"
        "_skops()\n"
        "print('sklearn.gaussian_process' in sys.modules, 'torch' in sys.modules)\n"
    )
    assert _printed_by(code) == ["True", "False"]
