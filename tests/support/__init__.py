"""Test helpers shared by several test folders (and top-level test files): tiny on-disk worlds, fixture datasets,
checkpoints and model folders, golden references, a fake ``torch.cuda``, and runners of the entry-point scripts.

A helper used by one test folder only stays in that folder; conftest.py files keep their fixtures and import the
helpers they need from here.
"""
