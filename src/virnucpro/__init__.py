"""virnucpro: identify viral sequences with DNABERT-S + ESM-2 features, VirNucPro-compatible."""

__version__ = "0.1.0"
