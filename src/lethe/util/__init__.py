"""Plain-Python utilities every layer may use: errors, file I/O, progress lines, registries, input checks and
run directories. Nothing here imports torch or another Lethe package."""
