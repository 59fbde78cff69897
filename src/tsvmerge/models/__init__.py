"""Model components (classification heads) shared by merging and evaluation."""
