"""The course (implements no part of the paper): the assignments (assignments.py), the student copy
(stripping.py), the grader (grading.py, its test process grading_runner.py and the graded tests in graded_tests/,
package data rather than modules) and the `uniad-mini course` subcommand (commands.py).

This layer reads the core only; the application (`app/`) dispatches it, nothing else reads it. pytest is needed at
run time by the grader (`pip install -e ".[course]"`)."""
