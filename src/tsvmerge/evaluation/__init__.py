"""Evaluation of merged models (SPEC §4): cached forward passes, α / λ selection, result files.

Modules: ``metrics`` (top-1, normalized top-1), ``evaluate`` (splits with cached preprocessed images, forward
passes), ``alpha_search`` (α policy, in-place θ0 + α·τ), ``results`` (atomic JSON, table), ``preflight`` (inputs
checked before any work), ``merge_eval`` (the ``main.py`` recipe), ``single_task`` (``eval_single_task.py``).
Kept import-light: entry points import the submodules they need.
"""
