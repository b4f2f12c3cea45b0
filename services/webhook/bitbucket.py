"""Bitbucket Cloud: what a webhook delivery asks for, and the REST calls tweakline makes back.

Payload parsing is plain functions over the documented JSON (``repo:push``,
``pullrequest:created`` / ``pullrequest:updated``); :class:`BitbucketClient` reads files and
diffstats at a commit and posts commit build statuses and pull-request comments. The API token
is sent only to the configured API origin (pagination links elsewhere are refused) and never
appears in errors or logs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from tweakline.errors import TweaklineError
from tweakline.reporting.ci import BuildStatus

log = logging.getLogger(__name__)

PUSH = "repo:push"
PR_CREATED = "pullrequest:created"
PR_UPDATED = "pullrequest:updated"
EVENTS = (PUSH, PR_CREATED, PR_UPDATED)


class PayloadError(TweaklineError):
    """A delivery's JSON does not have the documented shape."""


class BitbucketError(TweaklineError):
    """A Bitbucket REST call failed; ``status`` is the HTTP status (0 when unreachable)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class FileTooLarge(BitbucketError):
    """A file in the repository is larger than the caller accepts (refused while streaming it)."""


MAX_FOLDER_FILES = 2000
"""Most files :meth:`BitbucketClient.folder` reads from one folder."""


@dataclass(frozen=True)
class Target:
    """One commit a delivery asks tweakline to look at."""

    repository: str  # workspace/repo_slug
    branch: str
    commit: str
    author: str | None = None
    pull_request: int | None = None
    previous: str | None = None  # the branch's head before a push (None for a new branch)


@dataclass(frozen=True)
class Ignored:
    """Something in a delivery that starts nothing, and why."""

    ref: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"ref": self.ref, "reason": self.reason}


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _repository(payload: Mapping[str, Any]) -> str:
    name = _get(payload, "repository", "full_name")
    if not isinstance(name, str) or "/" not in name:
        raise PayloadError("repository.full_name is missing; expected 'workspace/repo_slug'")
    return name


def _person(data: Any) -> str | None:
    for keys in (("user", "display_name"), ("display_name",), ("user", "nickname"), ("nickname",), ("raw",)):
        value = _get(data, *keys)
        if isinstance(value, str) and value:
            return value
    return None


def targets_from_push(payload: Mapping[str, Any]) -> tuple[list[Target], list[Ignored]]:
    """The branch heads a ``repo:push`` moved; tags and deleted branches are ignored with a reason."""
    repository = _repository(payload)
    changes = _get(payload, "push", "changes")
    if not isinstance(changes, list):
        raise PayloadError("push.changes is missing; expected a list of ref changes")
    actor = _person(payload.get("actor"))
    targets: list[Target] = []
    ignored: list[Ignored] = []
    for index, change in enumerate(changes):
        new, old = _get(change, "new"), _get(change, "old")
        if new is None:
            ref = _get(old, "name") or f"change {index}"
            ignored.append(Ignored(str(ref), "branch or tag deleted: nothing to tune"))
            continue
        name, kind = _get(new, "name"), _get(new, "type")
        commit = _get(new, "target", "hash")
        if kind != "branch":
            ignored.append(Ignored(str(name), f"{kind or 'unknown ref'} push: only branch pushes start experiments"))
            continue
        if not isinstance(name, str) or not isinstance(commit, str) or not commit:
            raise PayloadError(f"push.changes[{index}].new needs name and target.hash")
        author = _person(_get(new, "target", "author")) or actor
        previous = _get(old, "target", "hash")
        targets.append(Target(repository, name, commit, author, None, previous if isinstance(previous, str) else None))
    return targets, ignored


def target_from_pull_request(payload: Mapping[str, Any]) -> Target:
    """The pull request's source commit (``pullrequest:created`` / ``updated``)."""
    repository = _repository(payload)
    pr = payload.get("pullrequest")
    number = _get(pr, "id")
    branch = _get(pr, "source", "branch", "name")
    commit = _get(pr, "source", "commit", "hash")
    if not isinstance(number, int) or not isinstance(branch, str) or not isinstance(commit, str):
        raise PayloadError("pullrequest needs id, source.branch.name and source.commit.hash")
    return Target(repository, branch, commit, _person(_get(pr, "author")), number)


class BitbucketClient:
    """The few Bitbucket Cloud REST 2.0 calls tweakline needs.

    Auth is ``Authorization: Bearer <token>`` (a repository, project or workspace access token),
    or HTTP basic with ``username`` and an app password.
    """

    def __init__(
        self,
        base_url: str,
        token: SecretStr | None = None,
        username: str | None = None,
        *,
        timeout: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "tweakline"}
        auth: httpx.BasicAuth | None = None
        if token is not None and username:
            auth = httpx.BasicAuth(username, token.get_secret_value())
        elif token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, auth=auth, timeout=timeout, follow_redirects=True, transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    @staticmethod
    def _repo(repository: str) -> str:
        workspace, _, slug = repository.partition("/")
        return f"/repositories/{quote(workspace, safe='')}/{quote(slug, safe='')}"

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        shown = url if url.startswith("/") else httpx.URL(url).path
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise BitbucketError(f"Bitbucket {method} {shown}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            detail = ""
            try:
                detail = str(_get(response.json(), "error", "message") or "")
            except ValueError:
                pass
            raise BitbucketError(
                f"Bitbucket {method} {shown}: HTTP {response.status_code}{': ' + detail if detail else ''}",
                response.status_code,
            )
        return response

    async def file(self, repository: str, commit: str, path: str, max_bytes: int | None = None) -> bytes:
        """The raw bytes of ``path`` at ``commit``; with ``max_bytes``, read no further than that.

        Raises:
            FileTooLarge: the file has more than ``max_bytes`` (found while streaming it).
        """
        url = f"{self._repo(repository)}/src/{quote(commit, safe='')}/{quote(path.lstrip('/'), safe='/')}"
        if max_bytes is None:
            return (await self._request("GET", url)).content
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise BitbucketError(f"Bitbucket GET {url}: HTTP {response.status_code}", response.status_code)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(f"{path} is more than {max_bytes} bytes", 413)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise BitbucketError(f"Bitbucket GET {url}: {type(exc).__name__}: {exc}") from None

    async def full_hash(self, repository: str, commit: str) -> str:
        """The full 40-character hash of a (possibly abbreviated) commit, as build statuses need."""
        if len(commit) == 40:
            return commit
        data = (await self._request("GET", f"{self._repo(repository)}/commit/{quote(commit, safe='')}")).json()
        full = data.get("hash") if isinstance(data, dict) else None
        if not isinstance(full, str) or not full.startswith(commit):
            raise BitbucketError(f"Bitbucket commit {commit}: no full hash in the answer")
        return full

    async def _paths(self, url: str) -> list[str]:
        """Paths added or changed in a paginated diffstat (removed files are left out)."""
        paths: list[str] = []
        next_url: str | None = url
        pages = 0
        while next_url and pages < 100:
            if not next_url.startswith("/") and not next_url.startswith(self.base_url + "/"):
                raise BitbucketError(f"Bitbucket diffstat pagination left {self.base_url}: refusing to follow it")
            data = (await self._request("GET", next_url, params={"pagelen": 500} if pages == 0 else None)).json()
            for item in data.get("values", []):
                path = _get(item, "new", "path")
                if item.get("status") != "removed" and isinstance(path, str):
                    paths.append(path)
            next_url = data.get("next")
            pages += 1
        return paths

    async def folder(
        self,
        repository: str,
        commit: str,
        path: str,
        *,
        max_bytes: int,
        max_files: int = MAX_FOLDER_FILES,
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, bytes]:
        """Every file under the folder ``path`` at ``commit`` (``""``: the repository's root), by path relative to it.

        Walks the ``src`` endpoint's directory listings (paginated ``commit_directory`` and
        ``commit_file`` entries, whose ``path`` is from the repository's root) and reads each
        file's raw bytes from the same endpoint. Symbolic links and submodules (the ``link`` and
        ``subrepository`` attributes) are left out, and so is any directory named in ``skip``.

        Raises:
            FileTooLarge: the files hold more than ``max_bytes`` together, or are more than ``max_files``.
            BitbucketError: a call failed (``status`` 404: no such folder at that commit).
        """
        root = path.strip("/")
        files: dict[str, bytes] = {}
        total = 0
        pending = [root]
        while pending:
            directory = pending.pop()
            url = f"{self._repo(repository)}/src/{quote(commit, safe='')}/" + (
                f"{quote(directory, safe='/')}/" if directory else ""
            )
            for entry in await self._listing(url):
                entry_path = entry.get("path")
                if not isinstance(entry_path, str) or (root and not entry_path.startswith(root + "/")):
                    continue  # not inside the folder asked for: never written anywhere
                relative = entry_path[len(root) + 1 :] if root else entry_path
                if ".." in relative.split("/") or relative.startswith("/"):
                    continue
                if entry.get("type") == "commit_directory":
                    if relative.rsplit("/", 1)[-1] not in skip:
                        pending.append(entry_path)
                    continue
                attributes = entry.get("attributes") or []
                if entry.get("type") != "commit_file" or "link" in attributes or "subrepository" in attributes:
                    continue
                if len(files) >= max_files:
                    raise FileTooLarge(f"{path or 'the repository'} holds more than {max_files} files", 413)
                size = entry.get("size")
                if isinstance(size, int) and total + size > max_bytes:
                    raise FileTooLarge(f"{path or 'the repository'} holds more than {max_bytes} bytes", 413)
                try:
                    data = await self.file(repository, commit, entry_path, max_bytes=max_bytes - total)
                except FileTooLarge:
                    raise FileTooLarge(f"{path or 'the repository'} holds more than {max_bytes} bytes", 413) from None
                total += len(data)
                files[relative] = data
        return files

    async def _listing(self, url: str) -> list[dict[str, Any]]:
        """The entries of a paginated directory listing (at most 100 pages are followed)."""
        entries: list[dict[str, Any]] = []
        next_url: str | None = url
        pages = 0
        while next_url and pages < 100:
            if not next_url.startswith("/") and not next_url.startswith(self.base_url + "/"):
                raise BitbucketError(f"Bitbucket src pagination left {self.base_url}: refusing to follow it")
            data = (await self._request("GET", next_url, params={"pagelen": 100} if pages == 0 else None)).json()
            if not isinstance(data, dict):
                raise BitbucketError(f"Bitbucket src listing {url}: expected a JSON object")
            entries += [item for item in data.get("values", []) if isinstance(item, dict)]
            next_url = data.get("next")
            pages += 1
        return entries

    async def changed_files(self, repository: str, commit: str, previous: str | None) -> list[str]:
        """Files a push changed: ``commit`` against ``previous`` (or against its parent)."""
        spec = f"{commit}..{previous}" if previous else commit  # Bitbucket's order: new..old
        return await self._paths(f"{self._repo(repository)}/diffstat/{quote(spec, safe='.')}")

    async def pull_request_files(self, repository: str, number: int) -> list[str]:
        """Files a pull request changes."""
        return await self._paths(f"{self._repo(repository)}/pullrequests/{number}/diffstat")

    async def set_build_status(self, repository: str, commit: str, status: BuildStatus) -> None:
        """Create or replace (same key) the commit's build status."""
        url = f"{self._repo(repository)}/commit/{quote(commit, safe='')}/statuses/build"
        await self._request("POST", url, json=status.body())

    async def comment(self, repository: str, number: int, markdown: str) -> None:
        """Add a Markdown comment to a pull request."""
        url = f"{self._repo(repository)}/pullrequests/{number}/comments"
        await self._request("POST", url, json={"content": {"raw": markdown}})
