"""What the data is: result-table models, snapshot contract, mode configs, settings, errors."""
