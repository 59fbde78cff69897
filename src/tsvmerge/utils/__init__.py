"""Generic helpers, the bottom floor (imports nothing of tsvmerge): the one `UserError` base, atomic file / JSON
writes and output-path checks, file locks, device selection, memory monitoring, huge pages and heap retention, the
entry points' error and signal handling, and the floor plan of the package (`layout`)."""
