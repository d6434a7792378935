"""GIL-held samples per thread in `py-spy record --gil --threads -f raw` files (gilprobe.sh),
and how many of them a thread spent inside Condition.notify (a futex wake-up made with the
GIL held). 250 samples a second over 15 s: 3,750 looks, of which these held the GIL.

    python3 agg.py *.raw.gz > agg.txt
"""
import collections
import gzip
import sys

for f in sys.argv[1:]:
    by, notify = collections.Counter(), collections.Counter()
    with (gzip.open(f, "rt") if f.endswith(".gz") else open(f)) as lines:
        for line in lines:
            stack, n = line.rsplit(" ", 1)
            thread = stack.split(";")[0].split(": ")[-1]
            by[thread] += int(n)
            if "Condition.notify" in stack.split(";")[-1]:
                notify[thread] += int(n)
    print(f, "total", sum(by.values()), dict(by.most_common()), "in notify:", dict(notify))
