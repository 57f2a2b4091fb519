"""Reports and exports built from stored results."""

__all__: list[str] = []
