#!/bin/sh
# parallel.sh [-c] N CMD [ARGS...]: start N copies of CMD at once and wait
# for all. Fails if any copy failed; with -c, prints how many failed instead.
# What a failed copy said goes to stderr.
count=0
if [ "$1" = -c ]; then count=1; shift; fi
n=$1
shift
dir=$(mktemp -d)
i=0
while [ "$i" -lt "$n" ]; do
    ( "$@" >/dev/null 2>"$dir/$i" || echo "status $?" >>"$dir/$i.failed" ) &
    i=$((i + 1))
done
wait
failed=0
for f in "$dir"/*.failed; do
    [ -e "$f" ] || continue
    failed=$((failed + 1))
    echo "parallel.sh: a copy failed ($(cat "$f")): $(cat "${f%.failed}")" >&2
done
rm -rf "$dir"
if [ "$count" = 1 ]; then echo "$failed"; else [ "$failed" = 0 ]; fi
