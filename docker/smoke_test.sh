#!/usr/bin/env bash
# Build both images and smoke-test them end to end, on a machine with Docker (a few minutes
# after the base images are pulled; the builds need network access):
#
#   docker/smoke_test.sh            # from the repository root, or from anywhere
#   KEEP=1 docker/smoke_test.sh     # keep the scratch folder with the store, run and logs
#
# 1. docker build handoff:ros (docker/ros.Dockerfile) and handoff:cuda (docker/cuda.Dockerfile)
# 2. handoff:ros   collects 2 scripted lift episodes          (handoff-collect)
# 3. handoff:cuda  trains ACT on them for 10 steps             (handoff-train; --gpus all when
#                  nvidia-smi lists a GPU, else on the CPU: the CUDA build runs there too)
# 4. handoff:ros   ros2 launch handoff_ros policy.launch.py robot:=sim with that checkpoint:
#                  waits for the policy to be configured and active, lets the sim arm and the
#                  policy run 5 s, stops them with SIGINT, and fails if launch reported a
#                  process that died or one that did not finish cleanly (ros2 launch itself
#                  exits 0 even when a node dies).
# Exit status 0 and "smoke test passed" when every step worked.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/handoff-smoke.XXXXXX")
trap '[ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

GPU=()
GL=(-e MUJOCO_GL=osmesa -e PYOPENGL_PLATFORM=osmesa)  # software rendering without a GPU
DEVICE=cpu
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  GPU=(--gpus all) GL=(-e MUJOCO_GL=egl) DEVICE=cuda
fi
# as this user (the files in $WORK stay yours; HOME=/work holds the caches and ROS logs);
# DDS stays inside each container: loopback discovery, a test domain
RUN=(docker run --rm --user "$(id -u):$(id -g)" -e HOME=/work -v "$WORK:/work"
     -e ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST -e ROS_DOMAIN_ID=42 "${GL[@]}")

step() { printf '\n== %s\n' "$*"; }

step "build handoff:ros and handoff:cuda"
docker build -f docker/ros.Dockerfile -t handoff:ros .
docker build -f docker/cuda.Dockerfile -t handoff:cuda .

step "collect 2 scripted lift episodes (handoff:ros)"
"${RUN[@]}" handoff:ros handoff-collect --task lift --episodes 2 --out /work/lift.zarr \
  --workers 1 --no-progress
"${RUN[@]}" handoff:ros handoff-data info /work/lift.zarr

step "train ACT for 10 steps on $DEVICE (handoff:cuda)"
"${RUN[@]}" "${GPU[@]}" handoff:cuda handoff-train --policy act --data /work/lift.zarr \
  --task lift --out /work/run --steps 10 --batch-size 4 --device "$DEVICE" \
  --eval-every 0 --eval-episodes 1 --no-progress
test -f "$WORK/run/last/config.json" || { echo "error: no checkpoint in $WORK/run" >&2; exit 1; }

step "ros2 launch the sim arm and the policy for 5 s (handoff:ros)"
# set -m: a background job of a non-interactive shell ignores SIGINT otherwise
"${RUN[@]}" handoff:ros bash -c '
  set -m
  ros2 launch handoff_ros policy.launch.py robot:=sim checkpoint:=/work/run \
    >/work/launch.log 2>&1 &
  pid=$!
  for _ in $(seq 180); do
    grep -q "active: commanding the arm" /work/launch.log && break
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  grep -q "active: commanding the arm" /work/launch.log || { cat /work/launch.log; exit 1; }
  sleep 5
  kill -INT $pid
  wait $pid
  cat /work/launch.log
  ! grep -q "process has died" /work/launch.log
  test "$(grep -c "process has finished cleanly" /work/launch.log)" = 2
'
step "smoke test passed"
