"""ttrpc (containerd/ttrpc PROTOCOL.md) on asyncio: client and server; imports no grpclib."""
