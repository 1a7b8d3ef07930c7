# rifscale, GPU image: as the CPU image, on a CUDA runtime base with CuPy (rifscale[gpu]),
# for the workers that advertise the Dask resource GPU=1 (the factorisation of H runs
# there). Python 3.12 like the CPU image (python:3.12-slim), so that both images can be
# workers of one cluster; build both from the same commit, at the same time, so that dask
# and distributed resolve to the same versions (compare `pip freeze` if in doubt).
# Build from the repository root (written without docker at hand; not built by the tests):
#
#   docker build -f deploy/docker/gpu.Dockerfile -t registry.example.com/rifscale-gpu:0.1.0 .
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

# DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL: dask workers sample every thread's stack
# every 10 ms by default, which costs rifscale's kernels 20-30 % (deploy/README.md);
# DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL: the scheduler drops a worker without heartbeats
# for this long (a frozen one) and reruns its tasks; dask's default, 5 minutes, can stall 10
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms \
    DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=60s \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/rifscale \
    PATH=/opt/rifscale/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/rifscale

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY rifscale ./rifscale
# cupy-cuda12x matches the CUDA 12 runtime of the base image
RUN pip install ".[gpu]" \
 && rm -rf /src \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid 1000 --user-group rifscale

USER 1000:1000
WORKDIR /home/rifscale
ENTRYPOINT ["rifscale"]
CMD ["--help"]
