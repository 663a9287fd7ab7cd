# The operator image used by the Helm chart.
FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home meshless
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir . && rm -rf /src
USER 10001
ENTRYPOINT ["meshless"]
CMD ["run"]
