"""tsvmerge: Task Singular Vectors merging (TSV-M, TSV-C) and classic model-merging baselines."""

__version__ = "0.1.0"
