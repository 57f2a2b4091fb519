"""Image I/O and preprocessing: readers (one per family of formats) and pure steps."""

__all__: list[str] = []
