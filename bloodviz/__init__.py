"""bloodviz: train, cache and compare blood-cell classifiers from published student studies."""

__version__ = "0.1.0"
