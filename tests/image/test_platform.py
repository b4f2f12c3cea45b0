"""The image, built from the repository's Dockerfile and run: the platform from it promotes a model it then serves.

nats-server runs on the host (the embedded one, with mTLS and per-identity permissions); the
topology is created by ``tweakline bus init`` in a container; the scheduler, trial-runner,
evaluator, deployer and model server run as containers of the image, each with its own
identity's certificate. The experiment is submitted from the host with ``submit --wait``; the
deployer's post-deploy check calls the containerised model server, and so does the test.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import run_cli
from tests.image.conftest import RELEASE
from tests.image.docker import IMAGE_USER, Docker
from tests.image.platform import Platform, wine_tweak
from tests.model_server.serving import rows
from tweakline.proto.permissions import Identity

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]


def test_image_runs_as_its_user_and_its_entry_point_is_the_cli(docker: Docker, image: str) -> None:
    user = docker("run", "--rm", "--network", "host", "--entrypoint", "id", image, "-u")
    assert user.stdout.strip() == str(IMAGE_USER)
    help_ = docker("run", "--rm", "--network", "host", image, "--help")
    assert "Usage: tweakline" in help_.stdout
    # a command that is no tweakline command but a program (a CI agent's `cat`) runs as given
    echo = docker("run", "--rm", "--network", "host", image, "echo", "agent")
    assert echo.stdout.strip() == "agent"
    unknown = docker("run", "--rm", "--network", "host", image, "no-such-command", check=False)
    assert unknown.returncode == 2 and "No such command" in unknown.stderr


def test_platform_from_the_image_promotes_and_serves(platform: Platform, tmp_path: Path) -> None:
    tweak = wine_tweak("image-wine", RELEASE, endpoint=platform.model_server_url)
    path = tmp_path / "wine.tweak.yaml"
    path.write_text(yaml.safe_dump(tweak))
    submitted = run_cli(
        "submit", str(path), "--wait", "--json", "--timeout", "400",
        "--nats-url", platform.url, "--tls-dir", str(platform.pki / Identity.SUBMITTER.value),
        timeout=500,
    )  # fmt: skip
    logs = "\n".join(f"--- {c}\n{platform.logs(c)}" for c in platform.containers)
    assert submitted.code == 0, submitted.stderr + logs
    result = submitted.json()
    assert result["decision"] == "promote", result
    assert result["deployment_status"] == "deployed" and result["revision"] == 1, result
    # the deployer (a container) checked the model server (a container) with the probe rows
    assert "post-deploy check passed" in result["deployment_message"], result

    answer = httpx.post(f"{platform.model_server_url}/predict", json={"rows": rows(5)}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["release"] == RELEASE and body["revision"] == 1
    assert len(body["predictions"]) == 5 and set(body["predictions"]) <= {0, 1, 2}
