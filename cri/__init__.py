"""The CRI plugin (``io.containerd.grpc.v1.cri``): Kubernetes pods, containers and images.

Arrives with the CRI issue; the package exists so the import namespace is fixed.
"""
