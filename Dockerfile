# One image for the operator, the quantum gateway and the worker (`qorch operator |
# gateway | worker`). Non-root, no shell tools beyond the slim base, locked dependencies.
# Two targets, the same lock (constraints.txt), the same models, the same user:
#   docker build -t qorch .                   default (the last stage): Aer on the CPU
#   docker build -t qorch-gpu --target gpu .  Aer built for CUDA 12 (qiskit-aer-gpu), for
#                                             worker pods on GPU nodes (the chart's
#                                             workerImage); linux/amd64 only
# The gpu image also serves the CPU pools' workers: the operator sets QORCH_DEVICE=CPU there.
# (Not `auto`: qiskit-aer-gpu lists "GPU" among its devices whether or not the node has one.)
# Build with BuildKit (the default since Docker 23; buildah and podman alike): it builds only
# the stages a target needs, so the default image never downloads the CUDA libraries.
# tests/integration/test_install.py runs the build stages' RUN steps in a fresh virtualenv.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
RUN python -m venv /opt/qorch \
 && /opt/qorch/bin/pip install --no-cache-dir -c constraints.txt .

# qiskit-aer-gpu is qiskit-aer compiled for CUDA: the same `qiskit_aer` module, so the two
# cannot be installed side by side (each overwrites the other's files), hence no `gpu` extra
# in pyproject.toml: the gpu image swaps one for the other. constraints.txt pins
# qiskit-aer-gpu at the locked qiskit-aer's version and the CUDA 12 runtime it pulls as
# wheels (nvidia-*-cu12: cudart, cuBLAS, cuSOLVER, cuSPARSE; cuquantum-cu12: cuStateVec,
# cuTensorNet), found through the module's RPATH: no CUDA base image needed, only the
# node's CUDA 12 driver (libcuda), which the NVIDIA runtime mounts. `pip check`
# then finds qorch's own qiskit-aer requirement unmet (pip cannot know that qiskit-aer-gpu
# provides it): that line alone is expected, any other fails the build.
FROM build AS build-gpu
RUN /opt/qorch/bin/pip uninstall -y qiskit-aer \
 && /opt/qorch/bin/pip install --no-cache-dir -c constraints.txt qiskit-aer-gpu \
 && ! /opt/qorch/bin/pip check \
   | grep -v -e '^qorch [^ ]* requires qiskit-aer, which is not installed\.$' -e '^No broken'

# What both images share; the models come first, as they change less often than the
# virtualenv (which holds qorch itself).
FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="qorch" \
      org.opencontainers.image.description="Kubernetes operator for hybrid quantum-classical workflows" \
      org.opencontainers.image.licenses="Apache-2.0"
# The predictor's trained models and their card; a mounted volume may replace them
# (the chart's `models`).
COPY models/*.onnx models/MODEL_CARD.md /opt/qorch/models/
ENV PATH=/opt/qorch/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    QORCH_MODELS_DIR=/opt/qorch/models
# 65532 is the conventional "nonroot" uid; pods also set runAsNonRoot. The files copied in
# stay root's: the process cannot change its own code or models.
USER 65532:65532
ENTRYPOINT ["qorch"]
CMD ["operator"]

FROM runtime AS gpu
LABEL org.opencontainers.image.description="Kubernetes operator for hybrid quantum-classical workflows (Aer on CUDA 12 GPUs)"
# The NVIDIA container runtime mounts the driver's libraries for these capabilities (unset:
# `utility` alone, no CUDA). Which GPUs the container sees stays the device plugin's choice
# (it sets NVIDIA_VISIBLE_DEVICES for pods that request nvidia.com/gpu): never `all` here.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-gpu /opt/qorch /opt/qorch

# The default target, last: Aer on the CPU.
FROM runtime AS cpu
COPY --from=build /opt/qorch /opt/qorch
