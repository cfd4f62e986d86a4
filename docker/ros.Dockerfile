# handoff on a ROS 2 host: ROS 2 Kilted base, the project installed, the workspace built.
#   docker build -f docker/ros.Dockerfile -t handoff:ros .
#   docker run --rm -it --network host handoff:ros ros2 launch handoff_ros sim.launch.py
# rclpy and the message packages come from the ROS base image (apt), not from PyPI.
# Fast DDS transports: every handoff node loads handoff_ros/fastdds.xml (a 16 MiB shared-memory
# segment, so raw camera frames are not split into UDP fragments) unless
# FASTDDS_DEFAULT_PROFILES_FILE names another profile. Run with --ipc host beside other nodes.
FROM ros:kilted-ros-base-noble

ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# MUJOCO_GL is left unset: handoff picks EGL when a GPU render device is passed in, else OSMesa

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-colcon-common-extensions libosmesa6 libegl1 libgl1 \
        ros-kilted-launch-ros ros-kilted-std-srvs ros-kilted-sensor-msgs \
        ros-kilted-trajectory-msgs ros-kilted-diagnostic-msgs ros-kilted-joy \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/handoff
# torch first and CPU-only, so the image stays small; use docker/cuda.Dockerfile for training
RUN pip3 install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY data ./data
COPY policies ./policies
COPY sim ./sim
RUN pip3 install ".[interop]"
COPY ros2_ws ./ros2_ws
COPY launch ./launch
RUN . /opt/ros/kilted/setup.sh && cd ros2_ws && colcon build --symlink-install

COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["bash"]
