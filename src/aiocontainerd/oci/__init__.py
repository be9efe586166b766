"""OCI runtime spec generation: containerd's default Linux spec and the options applied to it."""
