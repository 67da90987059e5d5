"""The `uniad-mini` command line and what serves only it: run folders, benchmarks, sweeps, the course.

This layer reads the core and the shortcut experiments; neither reads it."""
