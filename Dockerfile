# syntax=docker/dockerfile:1
#
# The credential broker as a small, non-root image that runs with a read-only root filesystem.
#
#   docker build -t credential-broker .                    the broker alone (target runtime)
#   docker build --target demo -t credential-broker:demo . plus the fake identity providers
#   docker run --rm --read-only -v "$PWD/config.yaml:/etc/broker/config.yaml:ro" credential-broker
#
# The broker listens where its config says (default 127.0.0.1:8181). In a container that is
# enough for apps sharing its network namespace (compose: network_mode: "service:broker", or a
# Kubernetes sidecar); set `host: 0.0.0.0` only when other containers must reach it over a
# network, and then publish no port to the outside. docker-compose.yml shows both patterns.
#
# scripts/image-test builds this file with podman and runs the result's root filesystem.

# Every stage uses the same base: the virtualenv copied from the build stage links to its
# interpreter. Pinned by digest, so a rebuild starts from the same bytes whatever the tag
# points to today. To move to a newer Python 3.11 patch release, read the tag's current
# digest and put it here in a reviewed change:
#   docker buildx imagetools inspect python:3.11-slim-bookworm     (its "Digest:" line)
# scripts/image-test passes a local stand-in (--build-arg PYTHON_IMAGE=...), as its machine
# cannot pull from Docker Hub.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91


FROM ${PYTHON_IMAGE} AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Dependencies first, from the hash-locked files alone (scripts/lock writes them from
# pyproject.toml): this layer is rebuilt only when they change, not on every source edit.
# Wheels only, every file checked against its hash: nothing is compiled, nothing unpinned
# arrives. setuptools, which builds the broker's own wheels, gets a venv of its own that
# stays behind in this stage.
COPY requirements/ /src/requirements/
RUN python -m venv /opt/build-tools \
    && /opt/build-tools/bin/pip install --require-hashes --only-binary :all: \
        --requirement /src/requirements/build.lock \
    && python -m venv /opt/broker \
    && /opt/broker/bin/pip install --require-hashes --only-binary :all: --no-deps \
        --requirement /src/requirements/runtime.lock

# Then the broker and its client helpers (credential-broker-client), built here from the checkout (no download: --no-build-isolation
# uses the locked setuptools above). pip compiles the bytecode, so nothing is written at
# run time. The installer leaves the runtime venv, and the fake identity providers move
# aside for the demo target.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client/ ./client/
COPY broker/ ./broker/
RUN /opt/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /src/wheels \
        ./client . \
    && /opt/broker/bin/pip install --no-deps /src/wheels/*.whl \
    && /opt/broker/bin/python -m pip uninstall --yes pip setuptools \
    && mv /opt/broker/lib/python3.11/site-packages/broker/fakes /opt/fakes


FROM ${PYTHON_IMAGE} AS runtime

# Set by scripts/image-test (or a release pipeline) from the package and the checkout.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="credential-broker" \
      org.opencontainers.image.description="Local credential-broker sidecar: logs in to OAuth2 identity providers, refreshes tokens ahead of expiry and serves them on localhost." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/broker/bin:$PATH \
    HOME=/var/lib/broker \
    BROKER_CONFIG=/etc/broker/config.yaml \
    BROKER_ADDRESS_FILE=/var/lib/broker/address.json

# No installer in the image: the base's own pip and setuptools go too (an image without
# them has nothing to install packages with at run time). A fixed UID/GID, so volume and
# secret-file permissions can be set from outside. /var/lib/broker is the only place the
# broker's user may write; /etc/broker holds the (mounted, read-only) config. /run/broker is
# for a Unix socket (listen_unix) shared with other containers through a named volume,
# which starts out with this owner and mode.
RUN if python -m pip --version >/dev/null 2>&1; then \
        python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel; \
    fi \
    && groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/broker --shell /usr/sbin/nologin broker \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/broker \
    && install -d -o 10001 -g 10001 -m 0755 /run/broker \
    && install -d -m 0755 /etc/broker

COPY --from=build /opt/broker /opt/broker

USER 10001:10001
WORKDIR /var/lib/broker
VOLUME ["/var/lib/broker"]
EXPOSE 8181

# Liveness only: /healthz never touches an identity provider, so an IdP outage cannot get
# the broker restarted (a restart would only lose the tokens it still serves). Consumers that
# need a token right away wait for readiness (`broker wait --ready`) or simply GET
# /token/<name>, which waits for one. `broker health` loads only the standard library and
# asks the address the broker wrote to $BROKER_ADDRESS_FILE once it was listening, so a
# config with another port needs no change here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["broker", "health"]

# The broker finishes in-flight requests and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker"]
CMD ["serve"]


# The compose demo's image: the runtime plus the fake identity providers
# (python -m broker.fakes ...), which the runtime image does not carry.
FROM runtime AS demo
COPY --from=build /opt/fakes /opt/broker/lib/python3.11/site-packages/broker/fakes


# The default target (`docker build .` builds the last stage): the runtime image.
FROM runtime
