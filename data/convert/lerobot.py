"""LeRobotDataset (v2.1 read, v3 read/write)."""
