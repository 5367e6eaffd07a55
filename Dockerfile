# syntax=docker/dockerfile:1
#
# Bakeline: ONE image for the operator (`bakeline operator`) and for every stage pod
# (`bakeline-agent <Agent>`), so an operator always launches agents of its own version.
#
#   docker build -t bakeline:0.1.0 .                 # the small CPU image (PyTorch's CPU index)
#   docker build --build-arg TORCH_INDEX_URL=https://mirror.example/whl/cpu -t bakeline:0.1.0 .
#   hack/image                                       # where only PyPI is reachable (below)
#
# Size, measured (hack/image, podman image inspect): 4.4 GB uncompressed, 2.4 GB as gzip
# layers, with PyPI's torch (the CUDA build: this machine cannot reach the CPU index). Of that:
# torch 1.2 GB, the nvidia-* libraries libtorch_cuda.so links 1.9 GB, scipy + scikit-learn
# 0.16 GB, transformers 0.13 GB, the MiniLM package 0.09 GB, ONNX Runtime 0.08 GB, the
# bootstrapped Debian base 0.25 GB. PyPI's torch whole would be ~6.7 GB (the builder stage,
# measured); the step after the install drops 2.3 GB of it that only a GPU run loads (triton,
# cuDNN's kernels, cuSOLVER, nvJitLink). With the default CPU index (no nvidia-* at all) expect
# ~2 GB: the CPU wheel is ~0.7 GB installed (estimated; not buildable here).
# Build time with hack/image on 2 cores, measured: about 12 minutes cold (base bootstrap, ~3 GB
# of wheels, layer commits); 6 min 23 s after a change to operator/ or agents/ on a machine
# loaded by other test runs (only Bakeline's own layers are rebuilt, the venv's 4 GB layer is
# reused); about a second when nothing changed (hack/image finds the image by content hash).
#
# No C++ compiler is installed (it would add ~0.2 GB): InferenceAccelerator then reports the
# torch-compile candidate as unavailable and chooses between ONNX Runtime and eager PyTorch.
#
# tests/unit/test_dockerfile.py lints this file with hadolint; tests/e2e/test_image.py builds it
# with hack/image and bakes the digits job in it as UID 65532 on a read-only root.

# A full patch version of the slim Debian image; pin a digest too in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS builder

# The PyTorch CPU wheel index: CPU-only torch wheels, no CUDA libraries. hack/image points it
# at PyPI where that index cannot be reached (PyPI's Linux torch is the CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The torch release Bakeline is tested with (pyproject.toml: torch>=2.5).
ARG TORCH_VERSION=2.15.0
# 1 removes what only a GPU run loads from a CUDA torch (the step after the install): a no-op
# for the CPU build; 0 keeps PyPI's torch whole, for an image that runs on GPUs.
ARG TORCH_CPU_ONLY=1
# A CA bundle for pip behind a TLS-intercepting proxy: a path that the build mounts (hack/image
# passes the host's); empty means pip's own.
ARG PIP_CERT=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Everything lands in one virtual environment that the runtime stage copies whole.
RUN python -m venv /opt/bakeline
ENV PATH=/opt/bakeline/bin:$PATH

# torch first and from its own index: the dependencies' install below then finds torch satisfied
# and never resolves the CUDA build from PyPI. pip's cache is a cache mount, never in a layer
# (BuildKit keeps it between builds; buildah 1.28 was seen to keep it empty, so there the layer
# cache is what spares a second torch download).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
# Bakeline's dependencies alone (no [dev] extra), read from pyproject.toml: this layer, and the
# runtime stage's copy of the venv, stay cached while operator/ and agents/ change.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip check

# A CUDA torch on a CPU image (PyPI's): what only a GPU run loads goes, so the runtime stage does
# not copy it. triton (the GPU kernel compiler; no C++ compiler here for torch.compile anyway),
# cuSOLVER and nvJitLink (dlopened by CUDA linear algebra and sparse kernels), cuDNN's kernel
# libraries (dlopened by libcudnn.so.9 when a CUDA convolution runs). What libtorch_cuda.so links
# stays (cudart, cuBLAS, cuFFT, cuSPARSE, NCCL, libcudnn.so.9 ...): torch cannot import without
# it. pip check ran above, before this; torch must still import and run a convolution after it.
RUN if [ "${TORCH_CPU_ONLY}" = 1 ] && pip show triton > /dev/null 2>&1; then \
      pip uninstall -y triton nvidia-cusolver nvidia-nvjitlink \
      && site=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
      && find "$site/nvidia/cudnn/lib" -name 'libcudnn_*.so*' -delete \
      && python -c "import torch; print(torch.nn.Conv2d(1, 2, 3)(torch.ones(1, 1, 4, 4)).shape)"; \
    fi

COPY setup.py README.md ./
COPY operator/ operator/
COPY agents/ agents/
# Bakeline itself, a regular (non-editable) install with its dependencies all above, into a
# prefix of its own that the runtime stage lays over the venv: a code change rebuilds a layer of
# a few MB, not the venv's 4 GB. Bytecode is compiled here: the runtime root is read-only.
RUN pip install --no-cache-dir --no-deps --prefix /opt/bakeline-app .

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
COPY --from=builder /opt/bakeline-app /opt/bakeline
# Both commands start from the merged venv (never from /src: operator/ would shadow a module).
RUN /opt/bakeline/bin/bakeline --help > /dev/null \
    && /opt/bakeline/bin/bakeline-agent --help > /dev/null
# The examples, read-only, where the working directory finds them: `bakeline run
# examples/bakingjob-digits.yaml --workdir /tmp/bake` works in the image as in a checkout.
COPY examples/ /srv/bakeline/examples/

# HOME and TMPDIR point at /tmp, the one writable path (an emptyDir in every pod). Every cache
# a library keeps under HOME is named too, so one that ignores HOME still lands in /tmp.
ENV PATH=/opt/bakeline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    NUMBA_CACHE_DIR=/tmp/.cache/numba

# Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# Read-only, outside /tmp: an emptyDir or tmpfs mounted over /tmp would hide the examples.
WORKDIR /srv/bakeline

# The chart and the operator always set the command: `bakeline operator ...` for the
# Deployment, `bakeline-agent <Agent>` for stage pods.
CMD ["bakeline", "--help"]
