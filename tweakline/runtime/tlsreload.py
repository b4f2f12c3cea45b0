"""Renewed certificates without a restart.

cert-manager renews an identity's certificate by rewriting its Secret; the kubelet then swaps
the mounted ``tls.crt``/``tls.key``/``ca.crt`` (the local dev CA rewrites the same files). A
process holding an ``ssl.SSLContext`` loaded at start would keep presenting the old
certificate and, once that expires, fail its next reconnect for good.

:class:`CertificateReloader` polls the three files; when they changed and the new certificate
and key form a valid pair, it loads them into the *same* context object the NATS client
holds (nats-py reads it again for every (re)connection), then asks the client to reconnect,
so the live connection moves to the new certificate at once. Subscriptions and JetStream
consumers survive a reconnect (nats-py re-subscribes; work in flight is redelivered, which
every handler tolerates).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from tweakline.runtime.pki import TlsFiles

log = logging.getLogger(__name__)


class LoadedContext(ssl.SSLContext):
    """A client context that remembers the digest of the files it was loaded from.

    The reloader compares the files with *that* digest, not with what they hold when it starts:
    a renewal landing between the connection and the reloader's start (a slow start on a busy
    node) would otherwise look current and never be picked up.
    """

    loaded_digest: str | None = None


class CertificateReloader:
    """Keeps ``context`` loaded with the current contents of ``files``."""

    def __init__(self, files: TlsFiles, context: ssl.SSLContext):
        self.files = files
        self.context = context
        self._loaded = getattr(context, "loaded_digest", None) or files.digest()

    def reload_if_changed(self) -> bool:
        """Load changed files into the context; return whether it now holds new ones.

        A half-written renewal (the new certificate with the old key) fails the pair check in a
        scratch context first and is retried at the next poll; the live context is untouched.
        """
        digest = self.files.digest()
        if digest is None or digest == self._loaded:
            return False
        cert, key, ca = str(self.files.cert), str(self.files.key), str(self.files.ca)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)  # pair check, off to the side
            self.context.load_cert_chain(cert, key)
            self.context.load_verify_locations(cafile=ca)  # adds a rotated CA; keeps the old one
        except (ssl.SSLError, OSError) as exc:
            log.info("certificate files in %s changing (%s); retrying", self.files.directory, exc)
            return False
        self._loaded = digest
        return True

    async def watch(self, interval: float, on_reload: Callable[[], Awaitable[None]]) -> None:
        """Poll every ``interval`` seconds until cancelled; call ``on_reload`` after each reload."""
        while True:
            await asyncio.sleep(interval)
            if self.reload_if_changed():
                log.info("renewed certificate loaded from %s; reconnecting with it", self.files.directory)
                try:
                    await on_reload()
                except Exception:  # the reconnect logic retries by itself; never kill the watcher
                    log.warning("reconnect after certificate renewal failed", exc_info=True)
