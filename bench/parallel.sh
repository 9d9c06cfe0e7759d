#!/bin/sh
# parallel.sh [-c] N CMD [ARGS...]: start N copies of CMD at once and wait
# for all. Fails if any copy failed; with -c, prints how many failed instead.
count=0
if [ "$1" = -c ]; then count=1; shift; fi
n=$1
shift
i=0
while [ "$i" -lt "$n" ]; do
    ( "$@" >/dev/null 2>&1 || echo fail ) &
    i=$((i + 1))
done > "${TMPDIR:-/tmp}/husk-parallel.$$"
wait
failed=$(grep -c fail "${TMPDIR:-/tmp}/husk-parallel.$$")
rm -f "${TMPDIR:-/tmp}/husk-parallel.$$"
if [ "$count" = 1 ]; then echo "$failed"; else [ "$failed" = 0 ]; fi
