"""Training: state, pure steps, optimizers, the loop."""
