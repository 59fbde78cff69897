"""tsvmerge: Task Singular Vectors merging (TSV-M, TSV-C) and classic model-merging baselines.

Importing tsvmerge (or any of its modules) changes no process-wide setting: no environment variable, no torch
option. Entry points opt in to what helps them (e.g. :func:`tsvmerge.utils.huge_pages.enable_huge_pages`).
"""

__version__ = "0.1.0"
