"""Infrastructure beside the notebook: what is not the method itself (sampling engines, environment adapters,
test tokenizers)."""
