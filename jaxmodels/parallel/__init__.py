"""Meshes, the logical->mesh rules table, state shardings and multi-host start-up."""
