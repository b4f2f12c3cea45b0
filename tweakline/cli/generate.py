"""Artefacts generated from the contracts, committed next to what reads them.

Run ``python -m tweakline.cli.generate`` from the repository root after changing a contract;
``--check`` exits non-zero when a committed artefact differs from a fresh generation (CI runs
the same comparison as a test). One function per artefact, each writing one file under ``root``:

- :func:`write_nats_authorization`: ``helm/tweakline/files/nats-authorization.json``, the NATS
  ``authorization`` block of :func:`tweakline.proto.permissions.permission_map`, which the Helm
  chart mounts into the NATS server and includes next to ``tls { verify_and_map: true }``.
- :func:`write_tweakfile_schema`: ``proto/tweakfile.schema.json``, the JSON Schema of the tweak
  file (editors validate ``*.tweak.yaml`` with it; ``tweakline validate`` goes further).
- :func:`write_asyncapi`: ``proto/asyncapi.yaml``, the AsyncAPI 3 document of the bus: one
  channel per subject family with its payload schema, and each identity's send/receive
  operations as the permission map allows them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tweakline import __version__
from tweakline.promotion.targets import DEPLOY_TARGETS
from tweakline.proto.messages import PAYLOADS
from tweakline.proto.permissions import Identity, Permissions, nats_authorization, permission_map, render_identity_table
from tweakline.proto.subjects import CONSUMER_FILTERS, STREAM_SUBJECTS, Subject, all_of
from tweakline.proto.tweakfile import TweakFile
from tweakline.search.algorithms import STRATEGIES
from tweakline.search.pruning import PRUNERS

NATS_AUTHORIZATION = Path("helm/tweakline/files/nats-authorization.json")
TWEAKFILE_SCHEMA = Path("proto/tweakfile.schema.json")
ASYNCAPI = Path("proto/asyncapi.yaml")
SECURITY_DOC = Path("docs/security.md")
TABLE_BEGIN = "<!-- identity-table:begin (generated: python -m tweakline.cli.generate) -->\n"
TABLE_END = "<!-- identity-table:end -->"


def render_security_doc(root: Path | None = None) -> str:
    """``docs/security.md`` with its identity table regenerated from the permission grants."""
    text = ((root or default_root()) / SECURITY_DOC).read_text(encoding="utf-8")
    head, begin, rest = text.partition(TABLE_BEGIN)
    _old, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise SystemExit(f"{SECURITY_DOC} lacks the identity-table markers")
    return head + begin + render_identity_table() + end + tail


def write_security_doc(root: Path) -> Path:
    """Regenerate the identity table inside ``docs/security.md`` (the rest is prose, kept)."""
    path = root / SECURITY_DOC
    return _write(path, render_security_doc(root if path.is_file() else None))


def render_nats_authorization() -> str:
    """The text of ``nats-authorization.json``: stable key order, one trailing newline."""
    return json.dumps(nats_authorization(), indent=2) + "\n"


def write_nats_authorization(root: Path) -> Path:
    """Write the chart's NATS authorisation map under ``root``; return its path."""
    return _write(root / NATS_AUTHORIZATION, render_nats_authorization())


def plugin_names() -> dict[tuple[str, str], list[str]]:
    """``(model, field) -> registered names`` for the tweak file's fields that name a plug-in.

    The contract keeps these fields plain strings (adding a plug-in never edits it); the schema
    editors read lists what is registered.
    """
    return {
        ("SearchSpec", "algorithm"): list(STRATEGIES),
        ("SearchSpec", "pruner"): list(PRUNERS),
        ("EarlyStoppingSpec", "algorithm"): list(PRUNERS),
        ("DeploySpec", "target"): list(DEPLOY_TARGETS),
    }


def with_plugin_names(definitions: dict[str, Any]) -> dict[str, Any]:
    """``definitions`` (schemas by model name) with the registered names as each plug-in field's ``enum``."""
    for (model, field), names in plugin_names().items():
        prop = definitions.get(model, {}).get("properties", {}).get(field)
        if prop is not None:
            prop["enum"] = names
    return definitions


def render_tweakfile_schema() -> str:
    """The JSON Schema (2020-12) of a tweak file, from the pydantic models and the plug-in registries."""
    schema = TweakFile.model_json_schema(mode="validation")
    with_plugin_names(schema.get("$defs", {}))
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tweakline.dev/schemas/tweakfile-v1.json",
        **schema,
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def write_tweakfile_schema(root: Path) -> Path:
    """Write the tweak file's JSON Schema under ``root``; return its path."""
    return _write(root / TWEAKFILE_SCHEMA, render_tweakfile_schema())


def _operations(family: Subject, perms: dict[Identity, Permissions]) -> list[tuple[Identity, str]]:
    """(identity, 'send' | 'receive') pairs the permission map grants on one subject family."""
    wildcard = all_of(family)
    found: list[tuple[Identity, str]] = []
    for identity, p in perms.items():
        if identity is Identity.ADMIN:
            continue  # the operator may do anything; listing it everywhere says nothing
        if wildcard in p.publish:
            found.append((identity, "send"))
        pulls = any(
            # a consumer of the family or of a part of it (each runner pool's, tweakline.trials.requested.<pool>.>)
            (filter_ == wildcard or filter_.startswith(f"{family.value}."))
            and f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}" in p.publish
            for consumer, (stream, filter_) in CONSUMER_FILTERS.items()
        )
        if pulls or wildcard in p.subscribe:
            found.append((identity, "receive"))
    return found


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 description of the bus, derived from the contracts."""
    perms = permission_map()
    stored_in = {subject: stream for stream, subjects in STREAM_SUBJECTS.items() for subject in subjects}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for family, model in PAYLOADS.items():
        channel_id = family.value.removeprefix("tweakline.").replace(".", "_")
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = schema
        stream = stored_in.get(all_of(family))
        key = "service" if family is Subject.DEAD_LETTER else "release" if family is Subject.MODEL_STATS else "experiment_id"
        parameters = {key: {"description": f"The {key.replace('_', ' ')}."}}
        address = f"{family.value}.{{{key}}}"
        if family is Subject.TRIAL_REQUESTED:  # routed by runner pool (proto.subjects.trial_subject)
            parameters = {
                "pool": {"description": "The runner pool (spec.resources.pool, else the platform's default)."}
            } | parameters
            address = f"{family.value}.{{pool}}.{{{key}}}"
        channels[channel_id] = {
            "address": address,
            "description": (model.__doc__ or "").strip().splitlines()[0]
            + (f" Stored in JetStream stream {stream}." if stream else " Core NATS (not stored)."),
            "parameters": parameters,
            "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
        }
        for identity, action in _operations(family, perms):
            operations[f"{identity.value.replace('-', '_')}_{action}_{channel_id}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"{identity.value} {action}s {model.__name__}",
            }
    messages = {
        model.__name__: {
            "name": model.__name__,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
        for model in PAYLOADS.values()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "tweakline bus",
            "version": __version__,
            "description": (
                "Messages between tweakline's services over NATS JetStream with mutual TLS. "
                "Generated from proto/ by python -m tweakline.cli.generate; do not edit."
            ),
        },
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The embedded stack of `tweakline run` (the port is chosen at start).",
                "security": [{"$ref": "#/components/securitySchemes/mtls"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": dict(sorted(with_plugin_names(schemas).items())),
            "securitySchemes": {
                "mtls": {"type": "X509", "description": "Client certificate with CN=<identity>, mapped by verify_and_map."}
            },
        },
    }


def render_asyncapi() -> str:
    """The text of ``asyncapi.yaml``."""
    return yaml.safe_dump(asyncapi_document(), sort_keys=False, width=100, allow_unicode=True)


def write_asyncapi(root: Path) -> Path:
    """Write the bus's AsyncAPI document under ``root``; return its path."""
    return _write(root / ASYNCAPI, render_asyncapi())


# artefact path (relative to the repository root) -> (renderer, writer)
ARTEFACTS: dict[Path, tuple[Callable[[], str], Callable[[Path], Path]]] = {
    NATS_AUTHORIZATION: (render_nats_authorization, write_nats_authorization),
    TWEAKFILE_SCHEMA: (render_tweakfile_schema, write_tweakfile_schema),
    ASYNCAPI: (render_asyncapi, write_asyncapi),
    SECURITY_DOC: (render_security_doc, write_security_doc),
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stale_artefacts(root: Path) -> list[Path]:
    """Artefacts under ``root`` that are missing or differ from a fresh generation."""
    stale = []
    for relative, (render, _write_fn) in ARTEFACTS.items():
        path = root / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != render():
            stale.append(relative)
    return stale


def default_root() -> Path:
    """The source checkout this module lives in (``tweakline/cli/`` below the repository root), else the cwd."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "helm").is_dir() else Path.cwd()


def main(argv: list[str] | None = None) -> int:
    """Write every artefact (or, with ``--check``, report the stale ones and exit 1)."""
    parser = argparse.ArgumentParser(prog="python -m tweakline.cli.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if an artefact is stale")
    args = parser.parse_args(argv)
    root: Path = args.root if args.root is not None else default_root()
    if args.check:
        stale = stale_artefacts(root)
        for relative in stale:
            print(f"stale: {relative} (run python -m tweakline.cli.generate)", file=sys.stderr)
        return 1 if stale else 0
    for _render, write in ARTEFACTS.values():
        print(write(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
