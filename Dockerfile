# One image for all three Tollgate commands:
#   tollgate -f CONFIG            (gateway replica; LLM port 4000, admin 15000)
#   tollgate-ratelimit ...        (rate-limit service; port 8080)
#   tollgate-mock-llm --port N    (fake OpenAI/Anthropic upstream)
# Build: docker build -t tollgate:0.1.0 .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, from pyproject.toml alone: editing source code does not
# invalidate this (slowest) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the packages themselves (no dependency resolution: they are already installed).
# lua/ and the demo's deploy files become package data; the sources are not kept.
COPY README.md ./
COPY gateway ./gateway
COPY ratelimit_service ./ratelimit_service
COPY tollgate_common ./tollgate_common
COPY tollgate_demo ./tollgate_demo
COPY lua ./lua
COPY deploy/gateway ./deploy/gateway
COPY deploy/ratelimit ./deploy/ratelimit
RUN pip install --no-deps . && rm -rf /app/*

COPY deploy/healthcheck.py /usr/local/bin/tollgate-healthcheck

RUN groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --no-create-home --shell /usr/sbin/nologin tollgate
USER 10001:10001

# What the default command (a gateway replica) listens on: LLM traffic and admin.
# The other commands listen where their --port says (compose and k8s publish them).
EXPOSE 4000 15000

# Default target: a gateway's readiness endpoint. Compose and Kubernetes give each
# service its own check (the rate-limit service: http://127.0.0.1:8080/healthcheck).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/bin/tollgate-healthcheck"]

CMD ["tollgate", "-f", "/etc/tollgate/config.yaml"]
