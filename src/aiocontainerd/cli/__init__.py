"""Command-line entry points: ``aiocontainerd`` (the daemon) and ``actr`` (the client)."""
