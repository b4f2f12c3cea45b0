"""The CI examples executed: their steps run inside the built image the way each CI system runs them.

* Jenkins (examples/ci/Jenkinsfile): the docker agent starts the image with
  ``docker run -t -d -u <uid>:<gid> -w $WORKSPACE -v $WORKSPACE:$WORKSPACE ... IMAGE cat``, checks
  that ``cat`` runs, and runs every ``sh`` step with ``docker exec`` as that user (``sh -xe``). The
  workspace and the credential files belong to the Jenkins user (UID 1000 here), which has no
  account in the image.
* Bitbucket (examples/ci/bitbucket-pipelines.yml): the clone, owned by another user than the
  image's, is mounted at ``$BITBUCKET_CLONE_DIR``; the step's script runs in one shell that stops at
  the first failing command, as the image's user or the ``run-as-user`` the pipeline declares.

The steps are read from the example files, not copied here; only the hosts and credentials a
team would configure (the NATS URL, the submitter's certificate) are the test platform's. Each
example submits to its own release, and the reports and build status it writes are checked.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES
from tests.image.docker import IMAGE_USER, Docker
from tests.image.platform import Platform, container_prefix, hand_over, wine_tweak
from tests.waiting import wait_until
from tweakline.proto.permissions import Identity

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

CI = EXAMPLES / "ci"
JENKINS_UID = 1000  # the agent's user: any UID other than the image's, with no account in the image
CLONE_OWNER = 1000  # who owns a Bitbucket clone: not the image's user
BITBUCKET_CLONE_DIR = "/opt/atlassian/pipelines/agent/build"
STEP_TIMEOUT = 600


def _owned_by(path: Path, uid: int) -> None:
    """chown -R (as root; elsewhere the files stay the test user's, which is then the 'other user')."""
    if os.geteuid() != 0:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, uid, uid)


def _checkout(root: Path, tweak_file: str, name: str, owner: int) -> Path:
    """A repository checkout holding the tweak file the example names (a quick wine experiment)."""
    root.mkdir(parents=True)
    target = root / tweak_file
    target.parent.mkdir(parents=True)
    target.write_text(yaml.safe_dump(wine_tweak(name, release=name)))
    _owned_by(root, owner)
    return root


def _reports(directory: Path) -> dict:
    status = json.loads((directory / "build-status.json").read_text())
    assert status["state"] == "SUCCESSFUL" and "promoted rev 1" in status["description"], status
    assert "promoted" in (directory / "report.md").read_text()
    return status


# ---- Jenkins -------------------------------------------------------------------------------------


def _jenkins() -> tuple[dict[str, str], list[str], str, list[str]]:
    """The Jenkinsfile's environment, its Validate steps, its Tune script and its post steps."""
    text = (CI / "Jenkinsfile").read_text()
    environment = dict(re.findall(r"(\w+) = '([^']*)'", re.search(r"environment \{(.*?)\}", text, re.S).group(1)))
    stages = text[text.index("stages {") : text.index("post {")]
    validate = re.findall(r"sh '([^']*)'", stages)
    tune = re.search(r"script: '''(.*?)'''", stages, re.S).group(1)
    post = re.findall(r"sh '([^']*)'", text[text.index("post {") :])
    assert validate and post and "tweakline submit" in tune
    return environment, validate, tune, post


def test_jenkins_docker_agent_runs_the_pipeline_in_the_image(
    docker: Docker, image: str, platform: Platform, tmp_path: Path
) -> None:
    environment, validate, tune, post = _jenkins()
    workspace = _checkout(tmp_path / "workspace" / "models", environment["TWEAK_FILE"], "jenkins-wine", JENKINS_UID)
    # withCredentials(file(...)): each secret file in <workspace>@tmp/secretFiles/<id>/, the agent user's
    secrets = hand_over(
        platform.pki / Identity.SUBMITTER.value,
        tmp_path / "workspace" / "models@tmp" / "secretFiles" / "1",
        JENKINS_UID,
        JENKINS_UID,
    )
    _owned_by(secrets.parents[1], JENKINS_UID)
    env = {
        **environment,
        "TWEAKLINE_NATS_URL": platform.url,  # the team's platform: here the test's
        "WORKSPACE": str(workspace),
        "BRANCH_NAME": "main",
        "GIT_COMMIT": "c" * 40,
        "TLS_CRT": str(secrets / "tls.crt"),
        "TLS_KEY": str(secrets / "tls.key"),
        "TLS_CA": str(secrets / "ca.crt"),
    }
    agent = f"{platform.prefix}-jenkins-agent"
    tmp = f"{workspace}@tmp"
    user = f"{JENKINS_UID}:{JENKINS_UID}" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    docker(
        "run", "-t", "-d", "-u", user, "--network", "host", "-w", str(workspace),
        "-v", f"{workspace}:{workspace}:rw", "-v", f"{tmp}:{tmp}:rw", "--name", agent, image, "cat",
    )  # fmt: skip
    try:
        # The agent's own check ("The container started but didn't run the expected command").
        def cat_runs() -> bool:
            if docker("inspect", "--format", "{{.State.Running}}", agent).stdout.strip() != "true":
                raise AssertionError(f"the agent container exited:\n{platform.logs(agent)}")
            processes = docker("top", agent, "-o", "pid,args", check=False).stdout.splitlines()[1:]
            return any(line.split(None, 1)[1:] == ["cat"] for line in processes)  # `cat`, not `tweakline cat`

        wait_until(cat_runs, "the agent container to run cat", timeout=120, interval=0.5)

        def sh(script: str) -> int:
            options = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
            proc = docker(
                "exec", "-w", str(workspace), *options, agent, "sh", "-xe", "-c", script, timeout=STEP_TIMEOUT, check=False
            )
            print(proc.stdout, proc.stderr)
            return proc.returncode

        for step in validate:
            assert sh(step) == 0, step
        code = sh(tune)
        for step in post:  # post { always { ... } }
            assert sh(step) == 0, step
        assert code == 0, f"Tune exited {code} (1 marks the build UNSTABLE, else FAILURE)"
    finally:
        docker("rm", "-f", agent, check=False)
    status = _reports(workspace / "reports")
    assert status["key"] == "tweakline-models-digits"
    assert not (workspace / ".tweakline-tls").exists()  # the post step removed the copied key
    if os.geteuid() == 0:  # written as the agent's user, so Jenkins can archive and clean them
        assert (workspace / "reports" / "report.md").stat().st_uid == JENKINS_UID


# ---- Bitbucket -----------------------------------------------------------------------------------


def _bitbucket() -> tuple[dict, dict[str, dict]]:
    pipeline = yaml.safe_load((CI / "bitbucket-pipelines.yml").read_text())
    return pipeline["image"], {s["step"]["name"]: s["step"] for s in pipeline["definitions"]["steps"]}


def _run_step(docker: Docker, image: str, step: dict, clone: Path, declared: dict, **variables: str):
    """Run one step's script as Bitbucket does: one shell, stop at the first failing command."""
    script = "set -e\n" + "\n".join(step["script"])
    env = {
        "BITBUCKET_CLONE_DIR": BITBUCKET_CLONE_DIR,
        "BITBUCKET_BRANCH": "main",
        "BITBUCKET_COMMIT": "b" * 40,
        "BITBUCKET_REPO_FULL_NAME": "acme/models",
        "BITBUCKET_BUILD_NUMBER": "7",
        "CI": "true",
        **variables,
    }
    options = ["--network", "host", "-v", f"{clone}:{BITBUCKET_CLONE_DIR}", "-w", BITBUCKET_CLONE_DIR]
    if "run-as-user" in declared:
        options += ["-u", str(declared["run-as-user"])]
    options += [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    proc = docker(
        "run",
        "--rm",
        "--name",
        f"{container_prefix()}-bitbucket",
        *options,
        image,
        "bash",
        "-c",
        script,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    print(proc.stdout, proc.stderr)
    return proc


def test_bitbucket_platform_step_runs_in_the_image(docker: Docker, image: str, platform: Platform, tmp_path: Path) -> None:
    declared, steps = _bitbucket()
    step = steps["Tune on the tweakline platform"]
    [tweak] = {w for line in step["script"] for w in shlex.split(line.replace(";", " ")) if w.endswith(".tweak.yaml")}
    clone = _checkout(tmp_path / "clone", tweak, "bitbucket-wine", CLONE_OWNER)
    tls = platform.pki / Identity.SUBMITTER.value
    secured = {
        "TWEAKLINE_NATS_URL": platform.url,
        "TWEAKLINE_TLS_CRT_B64": base64.b64encode((tls / "tls.crt").read_bytes()).decode(),
        "TWEAKLINE_TLS_KEY_B64": base64.b64encode((tls / "tls.key").read_bytes()).decode(),
        "TWEAKLINE_CA_CRT_B64": base64.b64encode((tls / "ca.crt").read_bytes()).decode(),
    }
    proc = _run_step(docker, image, step, clone, declared, **secured)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = _reports(clone / "reports")
    assert status["key"] == "tweakline-models-digits"
    assert not (clone / ".tweakline-tls").exists()


def test_bitbucket_embedded_step_runs_in_the_image(docker: Docker, image: str, tmp_path: Path) -> None:
    declared, steps = _bitbucket()
    step = steps["Tune (embedded platform, no cluster)"]
    [tweak] = {w for line in step["script"] for w in shlex.split(line) if w.endswith(".tweak.yaml")}
    clone = _checkout(tmp_path / "clone", tweak, "bitbucket-embedded", CLONE_OWNER)
    proc = _run_step(docker, image, step, clone, declared)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _reports(clone / "reports")


def test_image_user_cannot_write_a_clone_it_does_not_own(docker: Docker, image: str, tmp_path: Path) -> None:
    """Why the pipeline declares ``run-as-user``: without it the image's user cannot write the clone."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the clone to another user")
    clone = _checkout(tmp_path / "clone", "models/x.tweak.yaml", "unused", CLONE_OWNER)
    proc = _run_step(docker, image, {"script": ["mkdir reports"]}, clone, {})
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
    assert IMAGE_USER != CLONE_OWNER
