"""`plcbridge bench` and `plcbridge gate`: run the station against the simulator for minutes,
report latency, jitter and resources (run.py, stats.py, report.py, plot.py), and hold a report
to a plant's budget (gate.py, budgets/)."""
