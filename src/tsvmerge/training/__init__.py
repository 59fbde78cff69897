"""Fine-tuning primitives: the published protocol on one or many processes (DDP).

Modules: ``distributed`` (launch kinds, process group set-up / teardown, collectives, local multi-process launcher),
``loop`` (one task's training loop, cosine-with-warm-up schedule), ``evaluation`` (sharded test / validation top-1),
``checkpointing`` (published layout, atomic writes), ``transforms`` (the training transform), ``reproducibility``
(seeded random streams, weight fingerprints of the DDP replicas). The protocol's hyper-parameters, epochs per dataset
and default task list are in :mod:`tsvmerge.models.finetuning_protocol`; ``finetune.py``'s whole recipe is
:mod:`tsvmerge.recipes.finetune`. Kept import-light: import the submodules directly.
"""
