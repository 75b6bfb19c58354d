"""Reports from results files: markdown and HTML tables and figures, per-scenario layouts, method comparison.

Reports read what a run wrote (results.json records its layout), so nothing here imports a scenario or the core."""
