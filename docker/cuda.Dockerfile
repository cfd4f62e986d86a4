# handoff for training on NVIDIA GPUs (one or several: `accelerate launch`).
#   docker build -f docker/cuda.Dockerfile -t handoff:cuda .
#   docker run --rm --gpus all -v $PWD/demos:/data -v $PWD/runs:/runs handoff:cuda \
#       handoff-train --policy diffusion --data /data/lift.zarr --task lift --out /runs/lift
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    MUJOCO_GL=egl

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-pip libegl1 libgl1 libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/handoff
RUN pip3 install --index-url https://download.pytorch.org/whl/cu128 "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY data ./data
COPY policies ./policies
COPY sim ./sim
RUN pip3 install ".[interop]"
CMD ["handoff-train", "--help"]
