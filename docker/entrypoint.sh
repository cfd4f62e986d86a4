#!/usr/bin/env bash
# Source ROS 2 and the handoff workspace, then run the given command.
set -e
source /opt/ros/kilted/setup.bash
source /opt/handoff/ros2_ws/install/setup.bash
exec "$@"
