# vgg-serve in one container: NVIDIA's Triton Inference Server (native onnxruntime backend, GPUs) serving the
# generated model repository, and the FastAPI gateway in front of it.
#
#   make repository                     # generates model_repository/, copied into the image as it is
#   docker build -t vgg-serve .
#   docker run --gpus all --read-only --tmpfs /tmp -p 127.0.0.1:8080:8080 -e VGG_GATEWAY_API_KEYS=change-me vgg-serve
#
# Run as the CPU image (Dockerfile.cpu) is run and tested: uid 10001, a read-only root filesystem with a tmpfs at
# /tmp (Triton's log, the generated key), Triton on the container's loopback with a key generated at start (or
# VGG_TRITON_KEY / VGG_TRITON_KEY_FILE), only the gateway published. /dev/shm: here only the pipeline steps use the
# Python backend (1 MB each at load, grown for large requests); the launcher checks the repository's need against
# /dev/shm before starting Triton and names --shm-size when it is short. The gateway binds 0.0.0.0 here, so it
# refuses to start without API keys (VGG_GATEWAY_API_KEYS or VGG_GATEWAY_API_KEYS_FILE) unless
# VGG_GATEWAY_ALLOW_OPEN=1 is set on purpose. Each refusal is one line, before Triton starts.
#
# Triton 2.54 (Ubuntu 24.04, Python 3.12): the project's pins (fastapi 0.165 needs Python >= 3.11) install there.
FROM nvcr.io/nvidia/tritonserver:25.01-py3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# Same pins as requirements.txt. numpy < 2: the Python backend stub is built against numpy 1.x.
RUN pip install numpy==1.26.4 pillow==13.0.0 fastapi==0.165.0 uvicorn==0.54.0 uvloop==0.23.0 httptools==0.9.0 \
        python-multipart==0.0.34 \
        prometheus_client==0.26.0 "tritonclient[grpc]==2.73.0" httpx==0.28.1 setuptools==84.2.1

WORKDIR /opt/vgg-serve
COPY pyproject.toml ./
COPY vgg/ vgg/
COPY server/ server/
COPY client/ client/
# Installed (not only copied) so the Python backend's stub processes import `server` whatever their sys.path.
RUN pip install --no-deps --no-build-isolation . \
    && groupadd --system --gid 10001 vgg \
    && useradd --system --uid 10001 --gid vgg --home-dir /opt/vgg-serve --shell /usr/sbin/nologin vgg
COPY --chown=10001:10001 model_repository/ /models/
COPY pipelines.toml ./
# The same pipelines, with the member models moved to GPU instances: TensorRT FP16 with an engine cache, optimisation
# profiles covering every shape the pipelines send, and warm-up requests so the first client does not pay for the
# engine build (python -m server.repository --target gpu; the preprocess and fusion steps stay on the CPU).
RUN python3 -m server.repository --spec pipelines.toml --repository /models --target gpu \
    && chown -R 10001:10001 /models

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4)"]

# server.serve, as `make serve` runs it, with the image's own Triton: Triton on loopback with every API but health
# behind a key generated at start (explicit model control: only what /models held at start is ever loaded), its
# Python-backend stubs healed, Triton and the gateway restarted with backoff; it exits non-zero after repeated failed
# starts, and the orchestrator restarts the container. SIGTERM stops both cleanly.
# Not verified here (no Docker engine): the stub healer reads the stubs' argv as the wheel's Triton 2.51 lays it out.
CMD ["python3", "-m", "server.serve", "--repository", "/models", "--address", "0.0.0.0", "--gateway-port", "8080", \
     "--tritonserver", "/opt/tritonserver/bin/tritonserver", "--backend-directory", "/opt/tritonserver/backends", \
     "--log", "/tmp/vgg-serve/tritonserver.log"]
