"""Models: the CLIP factory (``factory.create_clip``), the image encoder in the published key layout (``encoder``),
classification heads (``heads``, ``zeroshot_heads``) and the split evaluation preprocess (``preprocess``).

Kept import-light (open_clip is imported only when a model is created): import the submodules directly.
"""
