"""The ``shardyard`` command: composes the CLI sub-apps each package owns, nothing else."""

from datastore import __version__

__all__ = ["__version__"]
