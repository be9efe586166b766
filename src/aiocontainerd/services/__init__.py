"""gRPC service handlers: thin adapters from wire types to core calls."""
