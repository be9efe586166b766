"""Our runc shim, ``containerd-shim-aiorunc-v2`` (runtime v2 shim API over ttrpc); imports no grpclib."""
