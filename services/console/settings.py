"""Settings of the console (``TWEAKLINE_CONSOLE_*``; the chart sets them from its values and a Secret)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """Where the console listens, who may log in, and the bounds of what it accepts."""

    model_config = SettingsConfigDict(env_prefix="TWEAKLINE_CONSOLE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Listen address (loopback by default; the chart sets 0.0.0.0).")
    port: int = Field(default=8090, ge=0, le=65535, description="Listen port (0: any free port).")
    read_token: SecretStr | None = Field(
        default=None, description="Token of the read-only role (bearer, basic password or login)."
    )
    operator_token: SecretStr | None = Field(
        default=None, description="Token of the operator role: may also cancel experiments and roll releases back."
    )
    session_secret: SecretStr | None = Field(
        default=None, description="Key signing login sessions; default: a random key per process (logins end on restart)."
    )
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0, description="How long a login lasts.")
    tls_dir: Path | None = Field(
        default=None, description="Serve HTTPS with tls.crt and tls.key from this directory (a mounted certificate Secret)."
    )
    secure_cookie: bool = Field(
        default=False, description="Mark the session cookie Secure though the console serves HTTP (TLS ends at a proxy)."
    )
    max_streams: int = Field(default=64, gt=0, description="Live event streams served at once (one per open page).")
    max_body_bytes: int = Field(default=8192, gt=0, description="Largest form body accepted (login and actions).")
    rollback_timeout_s: float = Field(default=120.0, gt=0, description="How long a rollback may take before the page says so.")
    login_failures_per_minute: int = Field(default=20, gt=0, description="Refused logins per client address before 429.")
