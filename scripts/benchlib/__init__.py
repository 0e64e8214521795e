"""scripts/bench.py's parts: settings, procs (the broker and the processes),
feed (the workload), phases, runner (one run) and report (the table)."""
