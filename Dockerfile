# syntax=docker/dockerfile:1
# The operator image the Helm chart runs. Two stages: the builder turns the repository into a
# wheel and installs it, with the pinned dependencies of hack/image-requirements.txt (binary
# wheels only, no resolution), into a virtualenv without pip; the final stage is
# python:3.11-slim plus that virtualenv, no compilers, no source tree, no pip cache.
# `make image` builds the same wheel and package set for the local node without a container
# engine (hack/operatorimage.py); tests/integration/test_image.py compares the two.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md hack/image-requirements.txt ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/meshless \
 && pip --python /opt/meshless/bin/python install --no-deps --only-binary=:all: \
      -r image-requirements.txt /wheels/*.whl \
 && pip --python /opt/meshless/bin/python check

FROM python:3.11-slim
ENV PATH=/opt/meshless/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/meshless /opt/meshless
# Numeric, so that runAsNonRoot can verify it; the chart's podSecurityContext uses the same id.
USER 65532:65532
ENTRYPOINT ["meshless", "run"]
