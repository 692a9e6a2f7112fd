# syntax=docker/dockerfile:1
#
# The credential broker as a small, non-root image that runs with a read-only root filesystem.
#
#   docker build -t credential-broker .
#   docker run --rm --read-only -v "$PWD/config.yaml:/etc/broker/config.yaml:ro" credential-broker
#
# The broker listens where its config says (default 127.0.0.1:8181). In a container that is
# enough for apps sharing its network namespace (compose: network_mode: "service:broker", or a
# Kubernetes sidecar); set `host: 0.0.0.0` only when other containers must reach it over a
# network, and then publish no port to the outside. docker-compose.yml shows both patterns.
#
# Both stages use the same base image: the virtualenv copied from the first one links to its
# interpreter. Pinned by tag; a release pipeline may pin the digest (python:3.11-slim@sha256:...).

FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/broker
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/broker/bin/pip install --no-cache-dir --requirement requirements.txt

# Then the package itself, without touching the dependencies installed above. pip compiles
# the bytecode here, so nothing needs to be written at run time.
COPY README.md ./
COPY broker/ ./broker/
RUN /opt/broker/bin/pip install --no-cache-dir --no-deps .


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/broker/bin:$PATH \
    HOME=/var/lib/broker

# A fixed UID/GID, so volume and secret-file permissions can be set from outside.
# /var/lib/broker is the only place the broker's user may write; /etc/broker holds the
# (mounted, read-only) config. /run/broker is for a Unix socket (listen_unix) shared with
# other containers through a named volume, which starts out with this owner and mode.
RUN groupadd --system --gid 10001 broker \
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
# need a token right away check /readyz (or simply GET /token/<name>, which waits for one).
# Plain Python, no curl in the image. Assumes the configured port is 8181.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8181/healthz', timeout=2).status == 200 else 1)"]

# The broker finishes in-flight requests and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/broker/config.yaml"]
