"""Settings of the model server (``TWEAKLINE_*``; the model-server chart sets the ``MODEL_*`` ones)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """What to serve and where to listen."""

    model_config = SettingsConfigDict(env_prefix="TWEAKLINE_", extra="ignore", protected_namespaces=())

    model_revision: int = Field(default=0, ge=0, description="0: follow the live revision; N: serve revision N only.")
    model_artifact: str = Field(default="", description="Serve this object instead of the revision's artifact.")
    model_sha256: str = Field(default="", description="Required SHA-256 of the artifact served (refused otherwise).")
    serve_host: str | None = Field(
        default=None, description="Listen address; default 127.0.0.1, or 0.0.0.0 inside Kubernetes (a pod)."
    )
    serve_port: int = Field(default=8080, ge=0, le=65535, description="Listen port (the chart's containerPort).")
    stats_interval_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Publish the live figures per revision (for the post-promotion watch) this often; 0: never.",
    )

    def host(self) -> str:
        """The listen address: loopback on a laptop, every interface in a pod (the probes need it)."""
        if self.serve_host:
            return self.serve_host
        return "0.0.0.0" if "KUBERNETES_SERVICE_HOST" in os.environ else "127.0.0.1"
