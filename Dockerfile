# One image for the operator, the quantum gateway and the worker (`qorch operator |
# gateway | worker`). Non-root, no shell tools beyond the slim base, locked dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
RUN python -m venv /opt/qorch \
 && /opt/qorch/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="qorch" \
      org.opencontainers.image.description="Kubernetes operator for hybrid quantum-classical workflows" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/qorch /opt/qorch
# The predictor's trained models and their card; a mounted volume may replace them
# (the chart's `models`).
COPY models/*.onnx models/MODEL_CARD.md /opt/qorch/models/
ENV PATH=/opt/qorch/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    QORCH_MODELS_DIR=/opt/qorch/models
# 65532 is the conventional "nonroot" uid; pods also set runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["qorch"]
CMD ["operator"]
