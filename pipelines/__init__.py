"""pipelines: filled by later issues (see docs/architecture.md)."""

__all__: list[str] = []
