"""The machine: which device computes (`device`), the memory it measures
(`measured_memory`), and what it can do (`sysinfo`)."""
