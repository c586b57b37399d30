"""Small runnable FastStream apps the subprocess tests start with ``python -m tests.apps.<name>``.

Each app reads its wiring from the environment (see ``_common.AppSettings``) and appends the id
of every message it finished processing as one line to the output file, flushed at once, so a
test can count what was processed even when the process dies by a signal.
"""
