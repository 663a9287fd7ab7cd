# syntax=docker/dockerfile:1
# The operator image the Helm chart runs. Two stages: the builder turns the repository into a
# wheel and installs it (with its dependencies, binary wheels only) into a virtualenv; the final
# stage is python:3.11-slim plus that virtualenv, no compilers, no source tree, no pip cache.
# tests/integration/test_image.py checks what can be checked without a container engine.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/meshless \
 && /opt/meshless/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/meshless/bin/pip uninstall --yes pip

FROM python:3.11-slim
ENV PATH=/opt/meshless/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/meshless /opt/meshless
# Numeric, so that runAsNonRoot can verify it; the chart's podSecurityContext uses the same id.
USER 65532:65532
ENTRYPOINT ["meshless", "run"]
