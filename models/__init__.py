"""Model definitions, training and evaluation code, and the shipped model files."""

__all__: list[str] = []
