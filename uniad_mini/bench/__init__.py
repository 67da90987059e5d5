"""The benchmarks: `bench-quality` (quality.py, with the baselines' training and costs in baselines.py),
`bench-speed` (speed.py, the FLOP counts and op table of roofline.py) and `sweep` (recipe variants side by side).

This layer reads the core (and may read `shortcut/`); the application (`app/`) dispatches it, nothing else reads it."""
