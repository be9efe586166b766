"""The metadata store of record on LMDB (``io.containerd.metadata.v1.lmdb``)."""

from .containers import ContainerStore
from .db import MetadataDB, SchemaError
from .namespaces import NamespaceStore

__all__ = ["ContainerStore", "MetadataDB", "NamespaceStore", "SchemaError"]
