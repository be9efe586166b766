"""Runtime plugins (``io.containerd.runtime.v2.task``): the shim v2 manager and our runc shim.

Arrive with the runtime issue; the package exists so the import namespace is fixed.
"""
