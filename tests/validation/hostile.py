"""A corpus of hostile tweak files, written by an attacker's rules: each breaks one bound.

:func:`write_corpus` writes every case into a folder (with its CSV files next to it) and
returns what the one line of refusal must contain. :func:`repository_cases` gives the cases that
can live in a git repository (bytes, not FIFOs or devices) for the webhook.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.factories import tweak_dict


@dataclass(frozen=True)
class Case:
    """One hostile file: its bytes (or a special kind of file), the CSV it names, and what a refusal says."""

    name: str
    data: bytes | None  # None: a special file made by write_corpus (FIFO, device, directory)
    expect: str  # a fragment of the one line of refusal (the field, or the bound broken)
    csv: bytes | None = None  # written as data/<name>.csv next to the tweak file


def _yaml(doc: dict) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def _good() -> dict:
    return tweak_dict("hostile")


def _with(path: str, value: object) -> bytes:
    doc = _good()
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return _yaml(doc)


def _csv_case(name: str, csv: bytes, expect: str) -> Case:
    doc = _good()
    doc["spec"]["dataset"] = {"source": f"csv:data/{name}.csv", "target": "y"}
    doc["spec"]["model"] = {"estimator": "sklearn.linear_model.LogisticRegression"}
    doc["spec"]["search"] = {"space": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}}}
    return Case(name, _yaml(doc), expect, csv)


def _rows(n: int, cell: str = "{i}") -> bytes:
    return ("a,b,y\n" + "".join(f"{cell.format(i=i)},{i % 7},{i % 2}\n" for i in range(n))).encode()


LAUGHS = b"""apiVersion: tweakline/v1
kind: Experiment
metadata: {name: bomb}
spec:
  dataset: {source: "sklearn:iris"}
  model:
    estimator: sklearn.svm.SVC
    fixed:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
  search: {space: {C: {type: float, low: 0.001, high: 1000, log: true}}}
  objective: {metric: accuracy, cv: 3}
"""


def cases() -> list[Case]:
    """Every hostile case (files and special files)."""
    good = _yaml(_good())
    duplicate = good.replace(
        b"  model:\n    estimator: sklearn.svm.SVC\n",
        b"  model:\n    estimator: sklearn.svm.SVC\n    estimator: sklearn.svm.LinearSVC\n",
    )
    assert duplicate != good
    return [
        Case("binary", bytes(range(256)) * 8, "not UTF-8"),
        Case("nul-bytes", good.replace(b"kind:", b"\x00kind:"), "NUL byte"),
        Case("latin-1", good + "# café\n".encode("latin-1"), "not UTF-8"),
        Case("huge", good + b"# padding\n" * 10_000, "at most"),
        Case("fifo", None, "FIFO"),
        Case("dev-zero", None, "character device"),
        Case("directory", None, "directory"),
        Case("empty", b"", "expected a mapping"),
        Case("a-list", b"- just\n- a list\n", "expected a mapping"),
        Case("deep-flow", b"a: " + b"[" * 20_000 + b"]" * 20_000 + b"\n", "nested more than"),
        Case(
            "deep-block", "".join(f"{'  ' * i}k{i}:\n" for i in range(200)).encode() + b"  " * 200 + b"x: 1\n", "nested more than"
        ),
        Case("deep-json-spec", _with("spec.model.fixed.x", eval("[" * 60 + "]" * 60)), "nested more than"),
        Case("alias-bomb-fixed", LAUGHS, "alias"),
        Case(
            "alias-bomb-deploy-values",
            LAUGHS.replace(b"  model:", b"  deploy:\n    release: r\n    values:\n      x: &z [1,2]\n      y: [*z,*z]\n  model:"),
            "alias",
        ),
        Case("alias-small", good + b"extra: &x 1\nmore: *x\n", "alias"),
        Case("merge-key", b"base: &b {a: 1}\nother:\n  <<: *b\n", "alias"),
        Case("duplicate-estimator", duplicate, "duplicate key 'estimator' at lines"),
        Case("duplicate-top", good + b"kind: Experiment\n", "duplicate key 'kind' at lines"),
        Case(
            "high-inf",
            _with("spec.search.space.C", {"type": "float", "low": 1, "high": float("inf")}),
            "spec.search.space.C.high: expected a finite number",
        ),
        Case(
            "low-nan",
            _with("spec.search.space.C", {"type": "float", "low": float("nan"), "high": 1}),
            "spec.search.space.C.low: expected a finite number",
        ),
        Case(
            "float-overflow",
            good.replace(b"high: 1000.0", b"high: 1.0e+400"),
            "spec.search.space.C.high: expected a finite number",
        ),
        Case(
            "inf-as-string", good.replace(b"high: 1000.0", b"high: '1e400'"), "spec.search.space.C.high: expected a finite number"
        ),
        Case("nan-as-string", good.replace(b"high: 1000.0", b"high: nan"), "spec.search.space.C.high"),
        Case(
            "int-5000-digits",
            _with("spec.model.fixed.max_iter", 10**5000 if False else 0).replace(b"max_iter: 0", b"max_iter: " + b"9" * 5000),
            "digits",
        ),
        Case(
            "grid-10-12",
            _with(
                "spec.search",
                {
                    "algorithm": "grid",
                    "space": {"a": {"type": "int", "low": 0, "high": 10**6}, "b": {"type": "int", "low": 0, "high": 10**6}},
                },
            ),
            "grid of",
        ),
        Case(
            "grid-float-tiny-step",
            _with("spec.search", {"algorithm": "grid", "space": {"C": {"type": "float", "low": 0, "high": 1, "step": 1e-12}}}),
            "grid of",
        ),
        Case(
            "many-choices",
            _with("spec.search.space.k", {"type": "categorical", "choices": list(range(1500))}),
            "spec.search.space.k.choices",
        ),
        Case(
            "many-parameters",
            _with("spec.search.space", {f"p{i}": {"type": "int", "low": 0, "high": 1} for i in range(500)}),
            "spec.search.space",
        ),
        Case("many-labels", _with("metadata.labels", {f"l{i}": "v" for i in range(500)}), "metadata.labels"),
        Case("long-label", _with("metadata.labels", {"team": "x" * 2000}), "metadata.labels.team"),
        Case("long-string", _with("spec.model.estimator", "a" * 10_000), "spec.model.estimator"),
        Case("huge-mapping", _with("spec.model.fixed", {f"k{i}": 0 for i in range(3000)}), "spec.model.fixed"),
        Case("python-object", good + b"x: !!python/object/apply:os.system ['touch /tmp/pwned']\n", "not allowed"),
        Case(
            "python-name",
            _with("spec.model.estimator", "PLACEHOLDER").replace(b"PLACEHOLDER", b"!!python/name:os.system ''"),
            "not allowed",
        ),
        Case("unknown-tag", good + b"x: !vault secret\n", "not allowed"),
        Case("unhashable-key", good + b"? [a, b]\n: 1\n", "YAML"),
        Case("two-documents", good + b"---\n" + good, "YAML syntax error"),
        Case("syntax", b"apiVersion: [\n", "YAML syntax error"),
        _csv_case("csv-inf", _rows(40, "{i}").replace(b"\n5,", b"\ninf,"), "infinite"),
        _csv_case("csv-strings", _rows(40).replace(b"\n7,", b"\nseven,"), "not numeric"),
        _csv_case("csv-nan-target", _rows(40) + b"1,2,nan\n", "target 'y' is empty"),
        _csv_case("csv-one-row", _rows(1), "single class"),
        _csv_case("csv-three-rows", _rows(3), "data row(s); expected at least"),
        _csv_case("csv-header-only", b"a,b,y\n", "no data rows"),
        _csv_case("csv-no-feature", b"y\n" + b"".join(f"{i % 2}\n".encode() for i in range(40)), "no feature columns"),
        _csv_case(
            "csv-all-nan-feature", ("a,b,y\n" + "".join(f"nan,{i},{i % 2}\n" for i in range(40))).encode(), "has no values"
        ),
        _csv_case("csv-binary", bytes(range(256)) * 4, "csv-binary.csv"),
        _csv_case("csv-missing-target", _rows(40).replace(b"a,b,y", b"a,b,z"), "spec.dataset.target"),
        _csv_case("csv-ragged", _rows(40) + b"1,2\n", "fields"),
        _csv_case("csv-fifo", None, "not a regular file"),
    ]


def write_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    """Write every case into ``folder``: name -> (the tweak file's path, the expected fragment)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, str]] = {}
    for case in cases():
        path = folder / f"{case.name}.tweak.yaml"
        if case.name == "fifo":
            os.mkfifo(path)
        elif case.name == "dev-zero":
            path = Path("/dev/zero")
        elif case.name == "directory":
            path.mkdir()
        else:
            assert case.data is not None
            path.write_bytes(case.data)
        if case.csv is not None:
            (folder / "data" / f"{case.name}.csv").write_bytes(case.csv)
        elif case.name == "csv-fifo":
            os.mkfifo(folder / "data" / f"{case.name}.csv")
        written[case.name] = (path, case.expect)
    return written


def repository_cases() -> list[Case]:
    """The cases a repository can hold (no FIFO, device or directory): for the webhook."""
    return [c for c in cases() if c.data is not None and c.name != "csv-fifo"]
