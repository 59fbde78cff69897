"""Fine-tuning (``finetune.py``): the published protocol on one or many processes (DDP).

Modules: ``protocol`` (hyper-parameters, epochs per dataset, default task list), ``distributed`` (launch kinds,
process group set-up / teardown, collectives, local multi-process launcher), ``loop`` (one task's training loop,
cosine-with-warm-up schedule), ``evaluation`` (sharded test / validation top-1), ``checkpointing`` (published layout,
atomic writes), ``run`` (the whole recipe). Kept import-light: import the submodules directly.
"""
