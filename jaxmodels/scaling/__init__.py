"""Scaling studies: fitting scaling laws to tables of runs (fit.py) and plotting them (plots.py)."""

from jaxmodels.scaling.fit import bootstrap, fit_isoflop, fit_joint, fit_single, fit_table, read_table
