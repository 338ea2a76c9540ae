"""Meshes, shardings and (later) multi-host start-up."""
