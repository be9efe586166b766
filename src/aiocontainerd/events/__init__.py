"""Events: the exchange (publish, forward, subscribe with filters), as containerd's ``events/exchange``."""
