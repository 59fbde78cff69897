"""What each command does, one module per command, named after it, read top to bottom.

``main.py`` runs :mod:`~tsvmerge.recipes.merge_and_evaluate`, ``finetune.py`` :mod:`~tsvmerge.recipes.finetune`,
``eval_single_task.py`` :mod:`~tsvmerge.recipes.eval_single_task`, ``analyze.py`` :mod:`~tsvmerge.recipes.analyze`,
``report.py`` :mod:`~tsvmerge.recipes.report`, ``demo.py`` :mod:`~tsvmerge.recipes.demo`; ``tsvmerge merge``,
``tsvmerge download`` and ``tsvmerge doctor`` run :mod:`~tsvmerge.recipes.merge`, :mod:`~tsvmerge.recipes.download`
and :mod:`~tsvmerge.recipes.doctor`. Each holds its settings, the function that builds them from the composed
configuration, and ``run()``. :mod:`~tsvmerge.recipes.configs` gives every command its configuration source.
Recipes are the top floor of the library: they import every package below, and none below imports them.
Kept import-light: import the submodules directly.
"""
