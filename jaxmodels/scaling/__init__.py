"""Scaling studies: analytic parameter and FLOP accounting (flops.py), device peaks and MFU
(hardware.py), fitting scaling laws to tables of runs (fit.py) and plotting them (plots.py).

    from jaxmodels.scaling import fit
    table = fit.read_table("runs.csv")
    law = fit.fit_joint(table["params"], table["tokens"], table["loss"])

The submodules are not imported here, so `python -m jaxmodels.scaling.fit` runs fit.py once
and importing the package starts neither JAX nor matplotlib.
"""
