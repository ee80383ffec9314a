"""The process's footing: every error a user can cause and its one line (`errors`), crash-safe
writes and weights-only loads (`files`), where a study's files live and the store lock
(`workspace`), Ctrl-C/SIGTERM at safe points (`signals`), a store that stops answering
waited for, then named (`outage`).

Lowest layer: imports nothing else of asl_sweep, and nothing heavy at import time."""
