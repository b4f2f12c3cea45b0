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
# builder: build the wheel, install it into a virtual environment
########################################
FROM python:${PYTHON_VERSION}-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY tweakline/ tweakline/
COPY proto/ proto/
COPY services/ services/
COPY helm/model-server/ helm/model-server/

RUN python -m venv /opt/tweakline \
 && python -m pip wheel --no-deps --wheel-dir /tmp/dist . \
 && wheel=$(echo /tmp/dist/tweakline-*.whl) \
 && /opt/tweakline/bin/pip install --constraint constraints.txt "${wheel}[parquet]" \
 && mkdir -p /opt/charts \
 && cp -r helm/model-server /opt/charts/model-server

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

COPY --from=builder /opt/tweakline /opt/tweakline
COPY --from=builder /opt/charts /usr/share/tweakline/charts
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
