"""Hand-written peers of the jaxmodels models for benchmarks/run.py: raw Flax + Optax, PyTorch
(eager and torch.compile) and Keras 3 on JAX. Each rebuilds a workload's model from its shape
dict (benchmarks/workloads.py) with the same parameter count as jaxmodels' model."""
