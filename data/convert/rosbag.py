"""rosbag2 (MCAP/sqlite3 read, MCAP write)."""
