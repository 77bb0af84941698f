"""The bottom layer: errors, console, files, locations, device, formatting, specs, results, statistics, provenance.

Nothing here imports another robaudit package, so every layer above may use it."""
