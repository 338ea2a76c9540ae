"""Orchestration: many runs at once, above training in the import order.

sweep.py runs a sweep file's runs (sequentially or in worker processes); packed.py trains K
same-shape models as one vmapped program through the training loop's pieces.
"""
