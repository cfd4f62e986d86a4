"""handoff data: embodiment spec, zarr demonstration store, sequence dataset, converters."""
