"""The deployer's image variant (``--build-arg WITH_HELM=true``) builds, and its Helm engine loads and renders.

The variant shares the default image's dependency layer and wheel (the build argument is declared
after the dependency install), so it costs one pip install, cached while the pins do not change,
and the wheel's install over it. The
check is the deployer's own: it creates the engine the helm target uses (which refuses to start
without helm-python-sdk), then renders the model-server chart the image ships through it.
"""

from __future__ import annotations

import pytest

from tests.image.docker import Docker

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

CHECK = """
from tweakline.deployer.helm import HelmSettings, SdkEngine
SdkEngine("ml-models")  # the deployer's engine: ConfigurationError without helm-python-sdk
import helm_python
with helm_python.Chart.load(str(HelmSettings().chart())) as chart:
    files = chart.render({}, name="iris", namespace="ml-models", is_install=True)
print(sorted(files))
"""


def _check(docker: Docker, image: str):
    return docker("run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c", CHECK, check=False, timeout=300)


def test_helm_variant_builds_and_its_helm_engine_loads(docker: Docker, image: str) -> None:
    without = _check(docker, image)
    assert without.returncode != 0 and "the helm target needs the Helm engine" in without.stderr, without.stderr
    helm = docker.build("tweakline:pytest-helm", "WITH_HELM=true")
    loaded = _check(docker, helm)
    assert loaded.returncode == 0, loaded.stderr
    assert "model-server/templates/deployment.yaml" in loaded.stdout, loaded.stdout
    # the three identical copies of libhelm_c.so are one file and two links (the variant's size)
    links = docker("run", "--rm", "--network", "host", "--entrypoint", "sh", helm, "-c",
                   "find /opt/tweakline -name 'libhelm_c.so*' -type l | wc -l", check=True)  # fmt: skip
    assert int(links.stdout.strip()) == 2
