"""cgroups v1 and v2: reading a container's statistics into containerd's cgroups Metrics messages."""
