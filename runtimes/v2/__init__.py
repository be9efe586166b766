"""Runtime v2: the shim manager (plugin ``io.containerd.runtime.v2.task``), bundles and shim clients."""
