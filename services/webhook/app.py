"""The Bitbucket webhook: signed deliveries in, experiments out, decisions reported back to the commit.

``tweakline service webhook`` runs an HTTP server (Starlette on uvicorn) next to a FastStream
broker connected as the ``webhook`` identity:

* ``POST <path>`` (default ``/webhooks/bitbucket``) takes ``repo:push``,
  ``pullrequest:created`` and ``pullrequest:updated``. The body (at most
  ``TWEAKLINE_WEBHOOK_MAX_BODY_BYTES``, JSON nested at most 32 deep) must carry a valid
  ``X-Hub-Signature: sha256=<hmac>`` (compared in constant time); a body (by its digest, which
  the signature covers) or an ``X-Request-UUID`` seen before is a replay (kept in a KV bucket
  with a TTL, so replays are refused durably). A pushed tweak file that is refused (the bounded
  loader of :mod:`tweakline.validation`) gets a FAILED build status naming the problem and a 2xx.
  The tweak files to run are the changed files matching the configured globs (from the
  Bitbucket diffstat) plus any configured paths; each is fetched at the pushed commit, its
  ``csv:`` dataset uploaded by content, checked, and submitted as one experiment carrying
  repository, branch, commit, author and pull request. The commit gets an INPROGRESS status.
* Durable consumers on ``evaluations.completed`` / ``deployments.completed`` turn each decision
  of a webhook experiment into a SUCCESSFUL / FAILED build status with a one-line summary, a
  Markdown pull-request comment, and the same report as files (``TWEAKLINE_WEBHOOK_REPORT_DIR``,
  served at ``GET /reports/<experiment id>``).

Secrets (the webhook secret, the Bitbucket token) come from the environment or mounted files
only; they are never logged and never put on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import importlib
import logging
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn
from faststream import AckPolicy, FastStream
from faststream.nats import NatsBroker, NatsMessage, NatsRouter
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tweakline import validation
from tweakline.client.follow import submit as publish_submission
from tweakline.client.submission import upload_code, upload_datasets
from tweakline.errors import BusError, ConfigurationError, DatasetError, InvalidTweakFileError, Problem
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    EvaluationCompleted,
    ExperimentCompleted,
    Source,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket, Consumer, Stream, Subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.reporting.ci import (
    BuildState,
    BuildStatus,
    decision_status,
    file_label,
    markdown_report,
    status_key,
    write_report,
)
from tweakline.runtime.health import EmbeddedServer
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings
from tweakline.validation.json_input import JsonLimitError, parse_json
from tweakline.validation.limits import MAX_FILE_BYTES, LimitError, decode
from tweakline.validation.trust import code_trainer_problems
from tweakline.webhook.bitbucket import (
    EVENTS,
    PUSH,
    BitbucketClient,
    BitbucketError,
    FileTooLarge,
    Ignored,
    PayloadError,
    Target,
    target_from_pull_request,
    targets_from_push,
)

log = logging.getLogger(__name__)

NAME = "webhook"
SIGNATURE_HEADER = "X-Hub-Signature"
REQUEST_ID_HEADER = "X-Request-UUID"
EVENT_HEADER = "X-Event-Key"
WEBHOOK_TRIGGER = "webhook"
INTAKE_KEY = "tweakline-intake"  # status key of failures before any tweak file is known
EXPERIMENT_ID = re.compile(r"[a-z0-9][-a-z0-9]{0,80}")


class WebhookSettings(BaseSettings):
    """Settings of the webhook (``TWEAKLINE_*`` variables; secrets also from ``*_FILE`` paths)."""

    model_config = SettingsConfigDict(env_prefix="TWEAKLINE_", extra="ignore")

    webhook_host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0 in a pod).")
    webhook_port: int = Field(default=8090, ge=0, description="Port to listen on (0: any free port).")
    webhook_path: str = Field(default="/webhooks/bitbucket", description="Path Bitbucket posts to.")
    webhook_secret: SecretStr | None = Field(default=None, description="The webhook's HMAC secret.")
    webhook_secret_file: Path | None = Field(default=None, description="A file holding the HMAC secret (a mounted Secret).")
    webhook_tweak_globs: list[str] = Field(
        default=["*.tweak.yaml", "*.tweak.yml"],
        description="Changed files matching these globs are run (fnmatch: '*' also crosses '/').",
    )
    webhook_tweak_paths: list[str] = Field(
        default_factory=list, description="Tweak files run on every push, changed or not (e.g. when model code changes)."
    )
    webhook_branches: list[str] = Field(default=["*"], description="Globs of branch names whose pushes are run.")
    webhook_public_url: str | None = Field(
        default=None, description="Public base URL of this service; build statuses link to <url>/reports/<id>."
    )
    webhook_report_dir: Path | None = Field(default=None, description="Write every report under <dir>/<experiment id>/.")
    webhook_max_body_bytes: int = Field(default=1_048_576, gt=0, description="Largest delivery accepted.")
    webhook_max_dataset_bytes: int = Field(
        default=256 * 1_048_576,
        gt=0,
        description="Largest csv:/parquet: file read from a pushed repository (held in memory to check and upload it).",
    )
    bitbucket_api_url: str = Field(default="https://api.bitbucket.org/2.0", description="Bitbucket REST API base URL.")
    bitbucket_token: SecretStr | None = Field(default=None, description="Access token (Bearer) or app password.")
    bitbucket_token_file: Path | None = Field(default=None, description="A file holding the token (a mounted Secret).")
    bitbucket_username: str | None = Field(default=None, description="Set with an app password: HTTP basic auth.")

    def secret(self) -> bytes:
        """The HMAC secret; refusing to run without one (unsigned deliveries are never accepted)."""
        value = _secret(self.webhook_secret, self.webhook_secret_file, "webhook secret")
        if value is None:
            raise ConfigurationError(
                "no webhook secret: set TWEAKLINE_WEBHOOK_SECRET or TWEAKLINE_WEBHOOK_SECRET_FILE "
                "(the same secret as in the Bitbucket webhook's settings)"
            )
        return value.get_secret_value().encode()

    def token(self) -> SecretStr | None:
        """The Bitbucket token, if configured (without one, nothing can be fetched or reported)."""
        return _secret(self.bitbucket_token, self.bitbucket_token_file, "Bitbucket token")


def _secret(value: SecretStr | None, path: Path | None, what: str) -> SecretStr | None:
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the {what} from {path}: {exc.strerror}") from None
        if not text:
            raise ConfigurationError(f"the {what} file {path} is empty")
        return SecretStr(text)
    if value is not None and value.get_secret_value():
        return value
    return None


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC-SHA256 of body>``, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header[7:].strip().lower().encode())


def _kv_key(*parts: str) -> str:
    # Request ids look like {uuid}: KV keys allow only [-/_=.a-zA-Z0-9], so store a digest.
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _repo_path(base: str, location: str) -> str | None:
    """``location`` relative to the tweak file's folder in the repository; None if it leaves the repository."""
    if location.startswith(("/", "~")):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(base), location))
    return None if joined.startswith("../") or joined == ".." else joined


@dataclass
class Reply:
    """What the intake answers: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class Webhook:
    """Intake of Bitbucket deliveries and reporting of decisions back to Bitbucket."""

    def __init__(self, settings: Settings, hook: WebhookSettings, broker: NatsBroker, bitbucket: BitbucketClient):
        self.settings = settings
        self.hook = hook
        self.secret = hook.secret()
        self.ctx = ServiceContext(settings, broker, NAME)
        self.bitbucket = bitbucket
        self.kv: KeyValue | None = None
        self.server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def http_app(self) -> Starlette:
        """The HTTP routes: the webhook, reports and a health check."""
        return Starlette(
            routes=[
                Route(self.hook.webhook_path, self._on_post, methods=["POST"]),
                Route("/reports/{experiment_id}", self._on_report, methods=["GET"]),
                Route("/healthz", lambda _request: PlainTextResponse("ok"), methods=["GET"]),
            ]
        )

    async def start(self) -> None:
        """Bind to the deliveries bucket, then listen for HTTP (after the broker connected)."""
        self.kv = await self.ctx.js.key_value(Bucket.WEBHOOK_DELIVERIES.value)
        # Bitbucket gives a delivery 10 s: import scikit-learn (for the checks) now, not on the first push.
        await asyncio.to_thread(importlib.import_module, "tweakline.ml.estimators")
        config = uvicorn.Config(
            self.http_app(),
            host=self.hook.webhook_host,
            port=self.hook.webhook_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = EmbeddedServer(config)
        self._serving = asyncio.create_task(self.server.serve())
        while not self.server.started:  # bind errors end serve() early: report them
            if self._serving.done():
                self._serving.result()
                raise ConfigurationError(f"the webhook could not listen on {self.hook.webhook_host}:{self.hook.webhook_port}")
            await asyncio.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        log.info("webhook listening on %s:%s%s", self.hook.webhook_host, self.port, self.hook.webhook_path)

    async def stop(self) -> None:
        """Stop listening and close the Bitbucket client."""
        if self.server is not None:
            self.server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)
        await self.bitbucket.aclose()

    # -- HTTP -----------------------------------------------------------------------------------

    async def _on_post(self, request: Request) -> Response:
        limit = self.hook.webhook_max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # never hold more than the limit in memory
            size += len(chunk)
            if size > limit:
                return JSONResponse({"error": f"body exceeds {limit} bytes"}, status_code=413)
            chunks.append(chunk)
        reply = await self.handle(request.headers, b"".join(chunks))
        return JSONResponse(reply.body, status_code=reply.status)

    async def _on_report(self, request: Request) -> Response:
        exp_id = request.path_params["experiment_id"]
        if self.hook.webhook_report_dir is None or not EXPERIMENT_ID.fullmatch(exp_id):
            return PlainTextResponse("not found", status_code=404)
        path = self.hook.webhook_report_dir / exp_id / "report.md"
        if not path.is_file():
            return PlainTextResponse("no report yet", status_code=404)
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")

    async def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Check, de-duplicate and act on one delivery; never raises."""
        if len(body) > self.hook.webhook_max_body_bytes:
            return Reply(413, {"error": f"body of {len(body)} bytes exceeds {self.hook.webhook_max_body_bytes}"})
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None:
            return Reply(401, {"error": f"missing {SIGNATURE_HEADER}: configure the webhook's secret in Bitbucket"})
        if not signature_ok(self.secret, body, signature):
            log.warning("refused a delivery with an invalid signature (request %s)", headers.get(REQUEST_ID_HEADER))
            return Reply(401, {"error": f"invalid {SIGNATURE_HEADER}"})
        event = headers.get(EVENT_HEADER, "")
        if event not in EVENTS:
            return Reply(400, {"error": f"unsupported event {event!r}; expected one of {', '.join(EVENTS)}"})
        request_id = headers.get(REQUEST_ID_HEADER)
        if not request_id:
            return Reply(400, {"error": f"missing {REQUEST_ID_HEADER}"})
        try:
            payload = parse_json(body)  # bounded: nesting and numbers checked before decoding
            if not isinstance(payload, dict):
                raise JsonLimitError(f"expected a JSON object, got {type(payload).__name__}")
        except JsonLimitError as exc:
            return Reply(400, {"error": f"body is not a JSON object: {exc}"})
        # Replays are recognised by what the signature covers (the body, which names the repository
        # and commits; with its event, as Bitbucket's created/updated may carry one body), not only
        # by the unsigned request id: a captured delivery re-sent with a new X-Request-UUID is the same.
        claims: list[str] = []
        for claim, what in (
            (_kv_key("body", event, hashlib.sha256(body).hexdigest()), "the same signed body"),
            (_kv_key("request", request_id), f"request {request_id}"),
        ):
            try:
                fresh = await self._claim(claim)
            except Exception as exc:  # the bus is down: Bitbucket retries later
                log.error("cannot record delivery %s: %s", request_id, exc)
                for key in claims:
                    await self._release(key)
                return Reply(503, {"error": "the platform's bus is unavailable; retry later"})
            if not fresh:
                for key in claims:
                    await self._release(key)
                return Reply(200, {"status": "duplicate", "reason": f"{what} was already handled"})
            claims.append(claim)
        try:
            reply = await self._act(event, payload, request_id, claims)
        except BusError as exc:  # uploading or publishing failed: Bitbucket retries later
            log.error("delivery %s: %s", request_id, exc)
            reply = Reply(503, {"error": "the platform's bus is unavailable; retry later"})
        except Exception as exc:
            log.exception("delivery %s failed", request_id)
            reply = Reply(500, {"error": f"internal error: {type(exc).__name__}"})
        if reply.status >= 500:  # a retry of this delivery may succeed: forget what it claimed
            for key in claims:
                await self._release(key)
        return reply

    async def _claim(self, key: str) -> bool:
        assert self.kv is not None
        try:
            await self.kv.create(key, b"1")
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _release(self, key: str) -> None:
        assert self.kv is not None
        with contextlib.suppress(Exception):
            await self.kv.delete(key)

    # -- intake ---------------------------------------------------------------------------------

    async def _act(self, event: str, payload: dict[str, Any], request_id: str, claims: list[str]) -> Reply:
        try:
            if event == PUSH:
                targets, ignored = targets_from_push(payload)
            else:
                targets, ignored = [target_from_pull_request(payload)], []
        except PayloadError as exc:
            return Reply(400, {"error": f"not a Bitbucket {event} payload: {exc}"})
        runnable: list[Target] = []
        for target in targets:
            if not any(fnmatch.fnmatchcase(target.branch, glob) for glob in self.hook.webhook_branches):
                ignored.append(Ignored(target.branch, "branch not configured for tuning (TWEAKLINE_WEBHOOK_BRANCHES)"))
                continue
            if target.pull_request is not None:
                # pullrequest:updated also fires for title or reviewer changes: run each head commit once.
                key = _kv_key("pr", target.repository, str(target.pull_request), target.commit)
                if not await self._claim(key):
                    ignored.append(
                        Ignored(target.branch, f"pull request #{target.pull_request} at {target.commit[:12]} already handled")
                    )
                    continue
                claims.append(key)
            runnable.append(target)
        submitted: list[dict[str, Any]] = []
        invalid: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for target in runnable:
            try:
                if len(target.commit) < 40:  # pull-request payloads carry 12-character hashes
                    target = replace(target, commit=await self.bitbucket.full_hash(target.repository, target.commit))
                paths = await self._tweak_paths(target)
            except BitbucketError as exc:
                failures.append({"commit": target.commit, "error": str(exc)})
                await self._status(
                    target,
                    BuildStatus(
                        INTAKE_KEY,
                        BuildState.FAILED,
                        "tweakline",
                        f"could not list the changed files: {exc}",
                        self._commit_url(target),
                    ),
                )
                await self._remember_failure(target)
                continue
            if await self._forget_failure(target):  # a retry worked: clear the earlier FAILED status
                await self._status(
                    target,
                    BuildStatus(
                        INTAKE_KEY, BuildState.SUCCESSFUL, "tweakline", "changed files listed on retry", self._commit_url(target)
                    ),
                )
            if not paths:
                ignored.append(Ignored(target.branch, f"no tweak file changed at {target.commit[:12]}"))
            for path in paths:
                await self._one_file(target, path, request_id, submitted, invalid, failures, ignored)
        body: dict[str, Any] = {
            "event": event,
            "submitted": submitted,
            "ignored": [i.as_dict() for i in ignored],
        }
        if invalid:
            body["invalid"] = invalid
        if failures:
            body["failures"] = failures
            return Reply(502, body)
        # An invalid tweak file is the commit's problem, reported as a FAILED build status naming
        # it; the delivery itself was handled (a 4xx/5xx would only make Bitbucket retry).
        return Reply(202 if submitted else 200, body)

    async def _remember_failure(self, target: Target) -> None:
        assert self.kv is not None
        with contextlib.suppress(Exception):
            await self.kv.put(_kv_key("intake-failed", target.repository, target.commit), b"1")

    async def _forget_failure(self, target: Target) -> bool:
        """Whether an intake failure was recorded for this commit (and forget it)."""
        assert self.kv is not None
        key = _kv_key("intake-failed", target.repository, target.commit)
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return False
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return False
        await self._release(key)
        return True

    async def _tweak_paths(self, target: Target) -> list[str]:
        if target.pull_request is not None:
            changed = await self.bitbucket.pull_request_files(target.repository, target.pull_request)
        else:
            changed = await self.bitbucket.changed_files(target.repository, target.commit, target.previous)
        paths = [p for p in changed if any(fnmatch.fnmatchcase(p, glob) for glob in self.hook.webhook_tweak_globs)]
        return list(dict.fromkeys([*self.hook.webhook_tweak_paths, *paths]))

    async def _one_file(
        self,
        target: Target,
        path: str,
        request_id: str,
        submitted: list[dict[str, Any]],
        invalid: list[dict[str, Any]],
        failures: list[dict[str, Any]],
        ignored: list[Ignored],
    ) -> None:
        where = f"{target.repository}@{target.commit[:12]}:{path}"
        try:
            raw = await self.bitbucket.file(target.repository, target.commit, path, max_bytes=MAX_FILE_BYTES)
        except FileTooLarge:
            raw = None  # refused below as an invalid tweak file, with the limit
        except BitbucketError as exc:
            if exc.status == 404 and path in self.hook.webhook_tweak_paths:
                ignored.append(Ignored(path, f"configured tweak file not present at {target.commit[:12]}"))
                return
            failures.append({"path": path, "commit": target.commit, "error": str(exc)})
            await self._status(
                target,
                BuildStatus(
                    status_key(file_label(path)),
                    BuildState.FAILED,
                    f"tweakline {path}",
                    f"could not fetch {path}: {exc}",
                    self._commit_url(target),
                ),
            )
            return
        try:
            if raw is None:
                raise InvalidTweakFileError(
                    where, [Problem("", f"is more than {MAX_FILE_BYTES} bytes; a tweak file may be at most that")]
                )
            tweak = await self._prepare(raw, path, target, where)
        except InvalidTweakFileError as exc:
            problems = [str(p) for p in exc.problems]
            invalid.append({"path": path, "commit": target.commit, "problems": problems})
            await self._status(
                target,
                BuildStatus(
                    status_key(file_label(path)),
                    BuildState.FAILED,
                    f"tweakline {path}",
                    f"invalid tweak file: {problems[0] if problems else ''}",
                    self._commit_url(target),
                ),
            )
            return
        except BitbucketError as exc:
            failures.append({"path": path, "commit": target.commit, "error": str(exc)})
            return
        name = tweak.metadata.name
        exp_id = f"{name}-{_kv_key(request_id, target.commit, path)[:8]}"
        source = Source(
            repository=target.repository,
            branch=target.branch,
            commit=target.commit,
            author=target.author,
            pull_request=target.pull_request,
            path=path,
            trigger=WEBHOOK_TRIGGER,
        )
        await publish_submission(self.ctx.broker.connection, tweak, source, exp_id)
        log.info("submitted %s from %s", exp_id, where)
        spec = tweak.spec
        await self._status(
            target,
            BuildStatus(
                status_key(file_label(path)),
                BuildState.INPROGRESS,
                f"tweakline {name}",
                f"tuning {spec.model.name.rsplit('.', 1)[-1]}: {spec.budget.max_trials} trials, "
                f"{spec.search.algorithm} search on {spec.objective.metric}",
                self._report_url(exp_id, target),
            ),
        )
        submitted.append(
            {
                "experiment_id": exp_id,
                "path": path,
                "repository": target.repository,
                "branch": target.branch,
                "commit": target.commit,
                "pull_request": target.pull_request,
            }
        )

    async def _prepare(self, raw: bytes, path: str, target: Target, where: str) -> TweakFile:
        """Check (the one validation entry point, as ``tweakline validate`` does) and upload the
        dataset from the repository: every problem, before anything starts."""
        try:
            text = decode(raw)  # UTF-8, no NUL bytes, at most the tweak-file size limit
        except LimitError as exc:
            raise InvalidTweakFileError(where, [exc.problem]) from None
        # No base directory: csv: files live in the repository, read below, never on this disk.
        tweak, problems = await asyncio.to_thread(
            validation.inspect, text, self.settings.allowed_estimators, None, source=where, pools=self.settings.pools
        )
        problems = code_trainer_problems(tweak, self.settings.code_trainers, target.repository) + problems
        data: bytes | None = None
        scheme, _, location = tweak.spec.dataset.source.partition(":") if tweak is not None else ("", "", "")
        # A source its plug-in refused (no path, say) is not looked for in the repository.
        malformed = any(p.path.startswith("spec.dataset.") for p in problems)
        if tweak is not None and scheme in ("csv", "parquet") and not malformed:
            try:
                data = await self._repo_csv(location, path, target, scheme)
                check = validation.csv_problems if scheme == "csv" else validation.parquet_problems
                problems += await asyncio.to_thread(
                    check, tweak.spec.dataset, data, _repo_path(path, location) or path, cv=tweak.spec.objective.cv
                )
            except InvalidTweakFileError as exc:
                problems += exc.problems
        if problems or tweak is None:
            raise InvalidTweakFileError(where, problems)

        async def read(location: str) -> bytes:
            assert data is not None  # read above, for the checks
            return data

        try:
            tweak, _uploads = await upload_datasets(tweak, self.ctx.js, read)
        except DatasetError as exc:
            raise InvalidTweakFileError(where, [Problem("spec.dataset.source", str(exc))]) from None
        return await self._ship_code(tweak, path, target, where)

    async def _ship_code(self, tweak: TweakFile, path: str, target: Target, where: str) -> TweakFile:
        """A code trainer's folder at the pushed commit, shipped as ``submit`` ships it: a content-addressed,
        size-limited bundle in the object store, and ``model.trainer.code: object:code:<sha256>``.

        The files come from Bitbucket's ``src`` endpoint (directory listings, then each file), never
        from this machine; the bundle is packed by the same code as ``submit``'s, so the same
        folder gives the same hash whichever way it was sent.
        """
        import tempfile

        from tweakline.errors import ArtifactError
        from tweakline.ml.artifacts import MAX_CODE_BYTES
        from tweakline.ml.trainers.bundles import SKIPPED_DIRS

        trainer = tweak.spec.model.trainer
        if trainer is None or trainer.code.startswith("object:"):
            return tweak
        field = "spec.model.trainer.code"
        folder = _repo_path(path, trainer.code)
        if folder is None:
            raise InvalidTweakFileError(
                where, [Problem(field, f"{trainer.code!r} must be a folder inside the repository, relative to {path}")]
            )
        shown = folder if folder != "." else "the repository's root"
        try:
            files = await self.bitbucket.folder(
                target.repository, target.commit, "" if folder == "." else folder, max_bytes=MAX_CODE_BYTES, skip=SKIPPED_DIRS
            )
        except FileTooLarge as exc:
            raise InvalidTweakFileError(
                where, [Problem(field, f"the code folder {shown} at commit {target.commit[:12]}: {exc}; a bundle is limited")]
            ) from None
        except BitbucketError as exc:
            if exc.status == 404:
                raise InvalidTweakFileError(
                    where, [Problem(field, f"no folder {shown} at commit {target.commit[:12]}")]
                ) from None
            raise
        if not files:
            raise InvalidTweakFileError(
                where, [Problem(field, f"the code folder {shown} at commit {target.commit[:12]} is empty")]
            )
        with tempfile.TemporaryDirectory(prefix="tweakline-code-") as tmp:
            base = Path(tmp)
            for relative, data in files.items():
                destination = base / "code" / relative  # relative: checked inside the folder by the client
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
            local = tweak.spec.model.model_copy(update={"trainer": trainer.model_copy(update={"code": "code"})})
            local_tweak = tweak.model_copy(update={"spec": tweak.spec.model_copy(update={"model": local})})
            try:
                shipped, _upload = await upload_code(local_tweak, self.ctx.js, base)
            except ArtifactError as exc:
                raise InvalidTweakFileError(where, [Problem(field, str(exc))]) from None
        return shipped

    async def _repo_csv(self, location: str, path: str, target: Target, scheme: str = "csv") -> bytes:
        """The bytes of a ``csv:`` (or ``parquet:``) dataset in the repository at the pushed commit (relative to the tweak file)."""
        in_repo = _repo_path(path, location)
        if in_repo is None:
            raise InvalidTweakFileError(
                path,
                [Problem("spec.dataset.source", f"{scheme}:{location} must be a path inside the repository, relative to {path}")],
            )
        limit = self.hook.webhook_max_dataset_bytes
        try:
            return await self.bitbucket.file(target.repository, target.commit, in_repo, max_bytes=limit)
        except FileTooLarge:
            raise InvalidTweakFileError(
                path,
                [
                    Problem(
                        "spec.dataset.source",
                        f"{in_repo} at commit {target.commit[:12]} is larger than the webhook reads "
                        f"({limit} bytes, TWEAKLINE_WEBHOOK_MAX_DATASET_BYTES); submit it from a pipeline step "
                        "('tweakline submit' uploads it by content) or use an https: or object: source",
                    )
                ],
            ) from None
        except BitbucketError as exc:
            if exc.status == 404:
                raise InvalidTweakFileError(
                    path, [Problem("spec.dataset.source", f"{in_repo} not found at commit {target.commit[:12]}")]
                ) from None
            raise

    # -- reporting ------------------------------------------------------------------------------

    def _commit_url(self, target: Target) -> str:
        return f"https://bitbucket.org/{target.repository}/commits/{target.commit}"

    def _report_url(self, exp_id: str, target: Target) -> str:
        if self.hook.webhook_public_url:
            return f"{self.hook.webhook_public_url.rstrip('/')}/reports/{exp_id}"
        return self._commit_url(target)

    async def _status(self, target: Target, status: BuildStatus) -> None:
        """Post a build status; a failure is logged (the delivery's answer still says what happened)."""
        try:
            await self.bitbucket.set_build_status(target.repository, target.commit, status)
        except BitbucketError as exc:
            log.error("could not set the build status of %s@%s: %s", target.repository, target.commit[:12], exc)

    @staticmethod
    def _ours(source: Source) -> bool:
        return source.trigger == WEBHOOK_TRIGGER and bool(source.repository) and bool(source.commit)

    async def _last(self, family: Subject, experiment_id: str, model: type) -> Any:
        try:
            msg = await self.ctx.js.get_last_msg(Stream.EVENTS.value, subject_for(family, experiment_id))
        except NotFoundError:
            return None
        return model.model_validate_json(msg.data or b"")

    async def on_evaluation(self, evaluation: EvaluationCompleted, msg: NatsMessage) -> None:
        """A decision: report it now, unless a deployment follows (then report that)."""
        if not self._ours(evaluation.source) or (evaluation.decision is Decision.PROMOTE and evaluation.deploy is not None):
            await msg.ack()
            return
        await self._report_and_ack(msg, evaluation, None)

    async def on_deployment(self, deployment: DeploymentCompleted, msg: NatsMessage) -> None:
        """A deployment finished: report the decision with its revision."""
        evaluation = await self._last(Subject.EVALUATION_COMPLETED, deployment.experiment_id, EvaluationCompleted)
        if evaluation is None or not self._ours(evaluation.source):
            await msg.ack()
            return
        await self._report_and_ack(msg, evaluation, deployment)

    async def _report_and_ack(
        self, msg: NatsMessage, evaluation: EvaluationCompleted, deployment: DeploymentCompleted | None
    ) -> None:
        try:
            await self.report(evaluation, deployment)
        except BitbucketError as exc:
            attempt = msg.raw_message.metadata.num_delivered or 1
            if attempt < 5:
                log.warning("reporting %s failed (attempt %d), will retry: %s", evaluation.experiment_id, attempt, exc)
                await msg.nack(delay=min(60.0, 2.0**attempt))
                return
            log.error("giving up reporting %s to Bitbucket: %s", evaluation.experiment_id, exc)
        await msg.ack()

    async def report(self, evaluation: EvaluationCompleted, deployment: DeploymentCompleted | None) -> None:
        """Write the report files, then post the build status and (for a pull request) the comment."""
        completed = await self._last(Subject.EXPERIMENT_COMPLETED, evaluation.experiment_id, ExperimentCompleted)
        name = completed.tweak.metadata.name if completed is not None else evaluation.experiment_id.rsplit("-", 1)[0]
        src = evaluation.source
        assert src.repository and src.commit
        target = Target(src.repository, src.branch or "", src.commit, src.author, src.pull_request)
        url = self._report_url(evaluation.experiment_id, target)
        key = status_key(file_label(src.path)) if src.path else status_key(name)
        status = decision_status(name, evaluation, deployment, url, key=key)
        markdown = markdown_report(name, evaluation, deployment, completed, url=url)
        if self.hook.webhook_report_dir is not None:
            write_report(self.hook.webhook_report_dir / evaluation.experiment_id, status, markdown)
        await self.bitbucket.set_build_status(src.repository, src.commit, status)
        if src.pull_request is not None:
            await self.bitbucket.comment(src.repository, src.pull_request, markdown)
        log.info("reported %s to %s@%s: %s", evaluation.experiment_id, src.repository, src.commit[:12], status.state)


def build(settings: Settings, hook: WebhookSettings, *, transport: Any = None) -> tuple[FastStream, Webhook]:
    """The webhook's FastStream app (reporting consumers, HTTP server started with it) and its state."""
    if settings.identity is not Identity.WEBHOOK:
        settings = settings.model_copy(update={"identity": Identity.WEBHOOK})
    broker = make_broker(settings, NAME)
    bitbucket = BitbucketClient(hook.bitbucket_api_url, hook.token(), hook.bitbucket_username, transport=transport)
    webhook = Webhook(settings, hook, broker, bitbucket)
    ctx = webhook.ctx
    router = NatsRouter()
    manual = {"ack_policy": AckPolicy.MANUAL}
    ctx.subscribe(router, webhook.on_evaluation, **durable_subscription(Consumer.WEBHOOK_EVALUATIONS), **manual)
    ctx.subscribe(router, webhook.on_deployment, **durable_subscription(Consumer.WEBHOOK_DEPLOYMENTS), **manual)
    broker.include_router(router)
    # start binds the deliveries bucket, then listens for HTTP: before any reporting message.
    return make_app(ctx, NAME, start=[webhook.start], stop=[webhook.stop]), webhook


def create_app(settings: Settings) -> FastStream:
    """Entry point of ``tweakline service webhook`` (reads :class:`WebhookSettings` from the environment)."""
    return build(settings, WebhookSettings())[0]


__all__ = ["Webhook", "WebhookSettings", "build", "create_app", "signature_ok"]
