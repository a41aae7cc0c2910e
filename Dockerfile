# xaiflow image: one image for the flow runner (xaiflow CLI, Prefect flows) and the Dask
# scheduler/workers, so every process runs the same code and library versions.
#
#   docker build -t xaiflow .                                   # torch from PyPI (CUDA-enabled on x86_64)
#   docker build -t xaiflow:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   docker build -t xaiflow:slurm --build-arg EXTRAS=flows,slurm .
#
#   docker run --rm --network host xaiflow dask scheduler
#   docker run --rm --network host --gpus all -v /data:/data xaiflow \
#       dask worker tcp://SCHEDULER:8786 --nthreads 4 --resources GPU=1
#   docker run --rm --network host -v /data:/data xaiflow \
#       xaiflow attribute configs/uhcs.yaml -w /data/ws.zarr --cluster tcp://SCHEDULER:8786
FROM python:3.11-slim

# extras of pyproject.toml to install, comma-separated (flows, slurm, k8s, gpu, torchvision)
ARG EXTRAS=flows
# a PyTorch wheel index for torch only, e.g. https://download.pytorch.org/whl/cpu for a small CPU image
ARG TORCH_INDEX_URL=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XAIFLOW_CLUSTER_DIR=/opt/xaiflow/configs/cluster \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/xaiflow
# dependencies first (cached while only the code changes); constraints.txt pins torch and prefect
COPY pyproject.toml constraints.txt README.md ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install -c constraints.txt --index-url "$TORCH_INDEX_URL" torch; \
    fi
COPY xaiflow ./xaiflow
COPY xaiflow_flows ./xaiflow_flows
RUN pip install -c constraints.txt ".[${EXTRAS}]"
COPY deploy ./deploy
# Dask config for every scheduler/worker in the image: no MALLOC_TRIM_THRESHOLD_ from the nanny
COPY deploy/dask.yaml /etc/dask/xaiflow.yaml

RUN useradd --create-home --uid 1000 xaiflow
USER xaiflow
# scheduler, dashboard, worker dashboard
EXPOSE 8786 8787 8788
CMD ["xaiflow", "--help"]
