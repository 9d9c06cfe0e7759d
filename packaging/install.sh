#!/bin/sh
# Build husk and install it under PREFIX, with the starter setuid root.
#   packaging/install.sh PREFIX
# PREFIX=/usr puts the config in /etc/husk/husk.conf; any other prefix in
# PREFIX/etc/husk/husk.conf. The path is compiled into the starter.
set -eu

usage() { echo "usage: $0 PREFIX   (run as root; PREFIX is an absolute path)" >&2; exit 2; }
[ $# -eq 1 ] || usage
prefix=$1
case $prefix in /*) ;; *) usage ;; esac
prefix=${prefix%/}
[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root to install the setuid starter" >&2; exit 1; }

if [ "$prefix" = /usr ]; then conf=/etc/husk/husk.conf; else conf=$prefix/etc/husk/husk.conf; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

HUSK_CONFIG_PATH=$conf cargo build --release --locked -q -p husk -p husk-starter

install -d -m 755 "$prefix/bin" "$prefix/libexec/husk" "$(dirname "$conf")"
install -m 755 target/release/husk "$prefix/bin/husk"
install -o root -g root -m 4755 target/release/husk-starter "$prefix/libexec/husk/husk-starter"
if [ ! -e "$conf" ]; then
    install -o root -g root -m 644 packaging/husk.conf "$conf"
fi
# The starter refuses a config unless it and every directory above it are
# root-owned and not writable by group or others; say so now, not at first use.
d=$(dirname "$conf")
while :; do
    set -- $(stat -c '%u %a' "$d")
    if [ "$1" != 0 ] || [ $(( 0$2 & 022 )) -ne 0 ]; then
        echo "install.sh: $d must be owned by root and not writable by group or others (the starter would refuse $conf)" >&2
        exit 1
    fi
    [ "$d" = / ] && break
    d=$(dirname "$d")
done
d=$prefix/libexec/husk
while [ "$d" != / ]; do
    set -- $(stat -c '%a' "$d")
    if [ $(( 0$1 & 01 )) -eq 0 ]; then
        echo "install.sh: warning: $d is not searchable by other users, who then cannot run husk (chmod o+x it)" >&2
    fi
    d=$(dirname "$d")
done
echo "installed husk in $prefix (config $conf)"
