"""A local HTTP server playing the Bitbucket Cloud REST API, recording every call tweakline makes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Call:
    """One request received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class FakeBitbucket:
    """Repository files per commit, diffstats, and the calls received (awaitable with :meth:`wait_for`)."""

    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # (repo, commit, path) -> bytes
    diffstats: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)  # (repo, spec) -> [(status, path)]
    pr_diffstats: dict[tuple[str, int], list[tuple[str, str]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    links: set[tuple[str, str, str]] = field(default_factory=set)  # files listed with the "link" attribute (symlinks)
    fail_diffstat: int = 0  # answer this many diffstat calls with HTTP 500
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    def calls_to(self, fragment: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if fragment in c.path and (method is None or c.method == method)]

    async def wait_for(self, fragment: str, method: str, count: int = 1, timeout: float = 30.0) -> list[Call]:
        """Wait until ``count`` calls whose path contains ``fragment`` arrived."""

        async def _enough() -> list[Call]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls_to(fragment, method)) >= count)
                return self.calls_to(fragment, method)

        return await asyncio.wait_for(_enough(), timeout)

    async def _record(self, request: Request) -> Call:
        body = await request.body()
        call = Call(
            request.method,
            request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
            await request.json() if body else None,
        )
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        return call

    async def _src(self, request: Request) -> Response:
        await self._record(request)
        p = request.path_params
        repo = f"{p['ws']}/{p['slug']}"
        data = self.files.get((repo, p["commit"], p["path"]))
        if data is None:
            return self._directory(request, repo, p["commit"], p["path"].strip("/"))
        return Response(data, media_type="application/octet-stream")

    def _directory(self, request: Request, repo: str, commit: str, folder: str) -> Response:
        """A directory's listing as Bitbucket documents it: paginated ``commit_directory`` / ``commit_file``
        entries whose ``path`` is from the repository's root (a few per page, so ``next`` must be followed)."""
        prefix = f"{folder}/" if folder else ""
        below = sorted(path for (r, c, path) in self.files if r == repo and c == commit and path.startswith(prefix))
        if not below:
            return JSONResponse({"type": "error", "error": {"message": "No such file or directory"}}, status_code=404)
        entries: dict[str, dict[str, Any]] = {}
        for path in below:
            head, _, rest = path[len(prefix) :].partition("/")
            if rest:
                entries.setdefault(prefix + head, {"type": "commit_directory", "path": prefix + head})
            else:
                attributes = ["link"] if (repo, commit, path) in self.links else []
                data = self.files[(repo, commit, path)]
                entries[path] = {"type": "commit_file", "path": path, "size": len(data), "attributes": attributes}
        values = list(entries.values())
        pagelen = min(int(request.query_params.get("pagelen", "10")), 3)
        page = int(request.query_params.get("page", "1"))
        body: dict[str, Any] = {"pagelen": pagelen, "page": page, "values": values[(page - 1) * pagelen : page * pagelen]}
        if page * pagelen < len(values):
            body["next"] = f"{self.url}{request.url.path}?pagelen={pagelen}&page={page + 1}"
        return JSONResponse(body)

    def _page(self, request: Request, entries: list[tuple[str, str]]) -> Response:
        # One entry per page, so that the client must follow "next".
        page = int(request.query_params.get("page", "1"))
        values = [
            {
                "type": "diffstat",
                "status": status,
                "new": None if status == "removed" else {"path": path},
                "old": {"path": path} if status != "added" else None,
            }
            for status, path in entries[page - 1 : page]
        ]
        body: dict[str, Any] = {"pagelen": 1, "page": page, "values": values}
        if page < len(entries):
            body["next"] = f"{self.url}{request.url.path}?page={page + 1}"
        return JSONResponse(body)

    async def _diffstat(self, request: Request) -> Response:
        await self._record(request)
        if self.fail_diffstat > 0:
            self.fail_diffstat -= 1
            return JSONResponse({"type": "error", "error": {"message": "Something went wrong"}}, status_code=500)
        p = request.path_params
        entries = self.diffstats.get((f"{p['ws']}/{p['slug']}", p["spec"]))
        if entries is None:
            return JSONResponse({"type": "error", "error": {"message": "Unknown revision"}}, status_code=404)
        return self._page(request, entries)

    async def _pr_diffstat(self, request: Request) -> Response:
        await self._record(request)
        if self.fail_diffstat > 0:
            self.fail_diffstat -= 1
            return JSONResponse({"type": "error", "error": {"message": "Something went wrong"}}, status_code=500)
        p = request.path_params
        return self._page(request, self.pr_diffstats.get((f"{p['ws']}/{p['slug']}", int(p["pr"])), []))

    async def _commit(self, request: Request) -> Response:
        await self._record(request)
        p = request.path_params
        repo = f"{p['ws']}/{p['slug']}"
        known = {c for (r, c, _path) in self.files if r == repo and len(c) == 40}
        matches = [c for c in known if c.startswith(p["commit"])]
        if len(matches) != 1:
            return JSONResponse({"type": "error", "error": {"message": "Commit not found"}}, status_code=404)
        return JSONResponse({"type": "commit", "hash": matches[0]})

    async def _created(self, request: Request) -> Response:
        call = await self._record(request)
        return JSONResponse(call.json or {}, status_code=201)

    def app(self) -> Starlette:
        base = "/2.0/repositories/{ws}/{slug}"
        return Starlette(
            routes=[
                Route(base + "/src/{commit}/{path:path}", self._src, methods=["GET"]),
                Route(base + "/diffstat/{spec}", self._diffstat, methods=["GET"]),
                Route(base + "/commit/{commit}", self._commit, methods=["GET"]),
                Route(base + "/pullrequests/{pr:int}/diffstat", self._pr_diffstat, methods=["GET"]),
                Route(base + "/commit/{commit}/statuses/build", self._created, methods=["POST"]),
                Route(base + "/pullrequests/{pr:int}/comments", self._created, methods=["POST"]),
            ]
        )

    async def start(self) -> str:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
