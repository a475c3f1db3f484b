"""Prefect tasks: one verb, one side effect each, thin wrappers over the results_store library."""
