"""Test support: a real registry (``docker-registry``), a fault-injecting front, test images."""
