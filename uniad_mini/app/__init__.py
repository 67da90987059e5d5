"""The user's application: the `uniad-mini` command line (`cli.py` parses, `actions.py` runs), `predict` and its
`report.html`, calibration, run folders.

This layer reads every other one -- the core, `shortcut/`, and `bench/` and `course/` to dispatch their
subcommands -- and none of them reads it."""
