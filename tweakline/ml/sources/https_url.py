"""``https://<host>/<path>.csv``: a CSV file downloaded by the runners (at most 1 GiB), once per
process, and once per machine when the URL pins its content with ``#sha256=<hex>``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tweakline.errors import DatasetError
from tweakline.ml.sources.base import Dataset, DatasetLoader, Task, location_of, register_source
from tweakline.proto.tweakfile import DatasetSpec

MAX_DOWNLOAD_BYTES = 1 << 30
"""Largest dataset an https: source may be (1 GiB)."""


@register_source
class HttpsLoader(DatasetLoader):
    """``https://<host>/<path>.csv``: downloaded once per process (and once per machine when the URL
    ends with ``#sha256=<hex>``, which is also checked)."""

    scheme = "https"
    form = "https://<url>.csv"

    def source_problem(self, source: str) -> str | None:
        rest = location_of(source)
        if not rest.startswith("//") or len(rest) <= 2 or not rest.split("?")[0].split("#")[0].endswith(".csv"):
            return f"'{source}' is not an https:// URL of a .csv file"
        return None

    @staticmethod
    def pinned(source: str) -> str | None:
        """The sha256 the URL's fragment pins, if any."""
        fragment = source.partition("#")[2]
        return fragment[7:].lower() if fragment.startswith("sha256=") else None

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        # The uploaded files' cache keeps downloads too; imported here so that registration follows
        # the package's import order (this module registers before object:).
        from tweakline.ml.sources.uploaded import ObjectLoader, load_csv_file

        url = spec.source.partition("#")[0]
        name = url.rsplit("/", 1)[-1]
        pinned = self.pinned(spec.source)
        if pinned is not None:
            path = ObjectLoader.cache.get(pinned, lambda: _download(url), spec.source)
            return load_csv_file(spec, path, task, name)
        data = _download(url)
        digest = hashlib.sha256(data).hexdigest()
        path = ObjectLoader.cache.get(digest, lambda: data, spec.source)
        return load_csv_file(spec, path, task, name)


def _download(url: str) -> bytes:
    import httpx  # only runners that read https: sources need it

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
            if response.status_code != 200:
                raise DatasetError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise DatasetError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise DatasetError(f"{url}: download failed: {exc}") from None
