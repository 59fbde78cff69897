"""``tsvmerge download …``: fetch what the paper's experiments read (datasets from maintained hub mirrors)."""
