#!/bin/bash
# cgmove.sh DAEMON_SHARES : for 30 s, move chromium/chromedriver into cgroup xbrowser (1024) and the daemon into xdaemon (DAEMON_SHARES)
echo ${1:-1024} > /sys/fs/cgroup/cpu/xdaemon/cpu.shares
echo 1024 > /sys/fs/cgroup/cpu/xbrowser/cpu.shares
for i in $(seq 30); do
  for p in $(pgrep -f "chromedriver|chromium|chrome_crashpad"); do echo $p > /sys/fs/cgroup/cpu/xbrowser/cgroup.procs 2>/dev/null; done
  for p in $(pgrep -f "plcbridge run"); do echo $p > /sys/fs/cgroup/cpu/xdaemon/cgroup.procs 2>/dev/null; done
  sleep 1
done
