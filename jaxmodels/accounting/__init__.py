"""Accounting: what a run costs and what it recorded, below training in the import order.

flops.py (analytic parameters and training FLOPs), hardware.py (device peaks, MFU) and
results.py (the results table every finished run appends to) import no training code, so the
loop can use them without the import direction turning around.
"""
