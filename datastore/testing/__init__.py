"""Test support shipped with the package: a real S3 server and the backend conformance suite."""

from datastore.testing.seaweedfs import SeaweedFS, free_port

__all__ = ["SeaweedFS", "free_port"]
