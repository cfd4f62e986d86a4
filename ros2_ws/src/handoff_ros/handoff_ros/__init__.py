"""handoff ROS 2 nodes: thin rclpy wrappers over plain Python."""
