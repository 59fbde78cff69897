"""Evaluation of merged models (SPEC §4): cached forward passes, α / λ selection, result files.

Modules: ``metrics`` (top-1, normalized top-1), ``evaluate`` (splits with cached preprocessed images, forward
passes), ``alpha_search`` (α policy, golden-section search, in-place θ0 + α·τ), ``results`` (atomic JSON, table),
``data_regime`` (the data each result used, in words), ``preflight`` (inputs checked before any work), ``eval_data``
(each task's validation and test splits and its classification head, built once), ``run_settings`` (a merge run's
typed settings, from its composed configuration), ``run_inputs`` (a merge run's inputs found on disk, and its result
file), ``accuracy_files`` (the single-task accuracy files and their locked updates), ``tracking`` (optional Weights
& Biases logging). The commands themselves are recipes: ``main.py`` runs :mod:`tsvmerge.recipes.merge_and_evaluate`,
``eval_single_task.py`` :mod:`tsvmerge.recipes.eval_single_task`.
Kept import-light: entry points import the submodules they need.
"""
