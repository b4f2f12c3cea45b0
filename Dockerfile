# syntax=docker/dockerfile:1
#
# The tweakline image: every service (`tweakline service NAME`), the model server
# (`tweakline serve RELEASE`) and the bus setup (`tweakline bus init`).
#
#   docker build -t tweakline:0.1.0 .
#   docker build -t tweakline:0.1.0-helm --build-arg WITH_HELM=true .   # the deployer's variant
#
# WITH_HELM adds helm-python-sdk (the Helm engine the deployer drives; ~85 MB once its three
# identical copies of libhelm_c.so are made one file and two links). Dependencies are installed
# with the repository's constraints.txt, the same pins CI tests with.

ARG PYTHON_VERSION=3.11

########################################
# requirements: the project's dependencies (and the parquet extra) read from pyproject.toml
########################################
# A stage of its own so the dependency layer below is keyed on this list, not on the whole
# pyproject.toml (whose tool settings change far more often than its dependencies). The list is
# written as a stub project depending on it: installed and then uninstalled, it leaves the
# dependencies exactly as installing the wheel does (pip marks nothing REQUESTED).
FROM python:${PYTHON_VERSION}-slim AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN mkdir /stub && python -c 'import json, tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print("[project]\nname = \"tweakline-requirements\"\nversion = \"0\"\ndependencies = " \
      + json.dumps(p["dependencies"] + p["optional-dependencies"]["parquet"]) \
      + "\n[tool.setuptools]\npackages = []")' > /stub/pyproject.toml

########################################
# dependencies: the virtual environment with every dependency, before any of the sources
########################################
# Installed before the sources are copied, so a change to the code rebuilds only the small
# layers of the wheel: the dependency (and Helm) layers come from the build cache.
FROM python:${PYTHON_VERSION}-slim AS dependencies

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY constraints.txt ./
COPY --from=requirements /stub/ /tmp/stub/
RUN python -m venv /opt/tweakline \
 && /opt/tweakline/bin/pip install --constraint constraints.txt /tmp/stub \
 && /opt/tweakline/bin/pip uninstall --yes tweakline-requirements \
 && rm -rf /tmp/stub

# Declared after the main install on purpose: a build argument's value is part of the cache key of
# every later RUN, so both variants share the layer above and WITH_HELM=true adds only this one.
ARG WITH_HELM=false
RUN if [ "$WITH_HELM" = "true" ]; then \
        /opt/tweakline/bin/pip install --constraint constraints.txt helm-python-sdk \
        && lib="$(/opt/tweakline/bin/python -c 'import helm_python, pathlib; print(pathlib.Path(helm_python.__file__).parent / "lib")')" \
        && versioned="$(find "$lib" -name 'libhelm_c.so.*.*.*' | head -n 1)" \
        && for copy in "$lib/libhelm_c.so" "$lib"/libhelm_c.so.[0-9]; do \
               if cmp -s "$copy" "$versioned"; then ln -sf "$(basename "$versioned")" "$copy"; fi; \
           done; \
    fi

########################################
# builder: the wheel of the sources
########################################
FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tweakline/ tweakline/
COPY proto/ proto/
COPY services/ services/
COPY helm/model-server/ helm/model-server/
RUN python -m pip wheel --no-deps --wheel-dir /tmp/dist .

########################################
# runtime: the interpreter, the virtual environment and the model-server chart; no build tools
########################################
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="tweakline" \
      org.opencontainers.image.description="Hyperparameter tuning for scikit-learn models in CI/CD: scheduler, trial-runner, evaluator, deployer and model server over NATS JetStream with mutual TLS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim"

# A fixed, unprivileged UID/GID (the chart's securityContext uses the same numbers).
RUN groupadd --system --gid 10001 tweakline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/tweakline \
        --shell /usr/sbin/nologin tweakline \
 && mkdir -p /var/lib/tweakline /etc/tweakline/tls \
 && chown 10001:10001 /var/lib/tweakline

# The dependencies first (a cached layer while they do not change), then the wheel installed
# over them from the index-less wheel directory: a dependency missing above fails the build
# here rather than being fetched.
COPY --from=dependencies /opt/tweakline /opt/tweakline
COPY --from=builder /tmp/dist/ /tmp/dist/
COPY constraints.txt /tmp/dist/
WORKDIR /tmp/dist
RUN wheel=$(echo /tmp/dist/tweakline-*.whl) \
 && PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
        /opt/tweakline/bin/pip install --no-index --constraint constraints.txt "${wheel}[parquet]" \
 && rm -rf /tmp/dist
COPY helm/model-server/ /usr/share/tweakline/charts/model-server/
COPY tools/docker/entrypoint.sh /usr/local/bin/tweakline-entrypoint

ENV PATH=/opt/tweakline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWEAKLINE_STATE_DIR=/var/lib/tweakline \
    TWEAKLINE_TLS_DIR=/etc/tweakline/tls

WORKDIR /var/lib/tweakline
USER 10001:10001

# 8080: /healthz, /readyz and /metrics of every service (and the model server's API);
# 8090: the scheduler's Bitbucket webhook.
EXPOSE 8080 8090

# `tweakline ARGS`, or another program when ARGS start with one (a CI agent's `cat` or shell).
ENTRYPOINT ["tweakline-entrypoint"]
CMD ["service", "scheduler"]
