#!/bin/sh
# Build husk and install it under PREFIX.
#   packaging/install.sh PREFIX                 (as root: the starter setuid root)
#   packaging/install.sh --unprivileged PREFIX  (any user: no setuid bit;
#       containers run in a user namespace, e.g. PREFIX=$HOME/.local)
# PREFIX=/usr puts the config in /etc/husk/husk.conf; any other prefix in
# PREFIX/etc/husk/husk.conf. The path is compiled into the starter.
set -eu

usage() { echo "usage: $0 [--unprivileged] PREFIX   (PREFIX is an absolute path)" >&2; exit 2; }
unprivileged=no
if [ "${1:-}" = --unprivileged ]; then unprivileged=yes; shift; fi
[ $# -eq 1 ] || usage
prefix=$1
case $prefix in /*) ;; *) usage ;; esac
prefix=${prefix%/}
me=$(id -u)
if [ $unprivileged = no ] && [ "$me" != 0 ]; then
    echo "install.sh: must run as root to install the setuid starter (or use --unprivileged)" >&2
    exit 1
fi

if [ "$prefix" = /usr ]; then conf=/etc/husk/husk.conf; else conf=$prefix/etc/husk/husk.conf; fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

target=${CARGO_TARGET_DIR:-target}
HUSK_PREFIX=$prefix HUSK_CONFIG_PATH=$conf cargo build --release --locked -q -p husk -p husk-starter

install -d -m 755 "$prefix/bin" "$prefix/libexec/husk" "$(dirname "$conf")"
install -m 755 "$target"/release/husk "$prefix/bin/husk"
if [ $unprivileged = yes ]; then
    install -m 755 "$target"/release/husk-starter "$prefix/libexec/husk/husk-starter"
else
    install -o root -g root -m 4755 "$target"/release/husk-starter "$prefix/libexec/husk/husk-starter"
fi
if [ ! -e "$conf" ]; then
    install -m 644 packaging/husk.conf "$conf"
fi
# The starter refuses a config unless it and every directory above it are
# root-owned (or, for an unprivileged starter, owned by the user running it)
# and not writable by group or others; say so now, not at first use.
d=$conf
while :; do
    set -- $(stat -c '%u %a' "$d")
    if { [ "$1" != 0 ] && { [ $unprivileged = no ] || [ "$1" != "$me" ]; }; } || [ $(( 0$2 & 022 )) -ne 0 ]; then
        if [ $unprivileged = yes ]; then who="root or you"; else who=root; fi
        echo "install.sh: $d must be owned by $who and not writable by group or others (the starter would refuse $conf)" >&2
        exit 1
    fi
    [ "$d" = / ] && break
    d=$(dirname "$d")
done
if [ $unprivileged = no ]; then
    d=$prefix/libexec/husk
    while [ "$d" != / ]; do
        set -- $(stat -c '%a' "$d")
        if [ $(( 0$1 & 01 )) -eq 0 ]; then
            echo "install.sh: warning: $d is not searchable by other users, who then cannot run husk (chmod o+x it)" >&2
        fi
        d=$(dirname "$d")
    done
    echo "installed husk in $prefix (config $conf)"
else
    if ! [ -x /usr/bin/squashfuse_ll ] && ! [ -x /usr/bin/squashfuse ] &&
        ! [ -x /usr/local/bin/squashfuse_ll ] && ! [ -x /usr/local/bin/squashfuse ]; then
        echo "install.sh: note: squashfuse is not installed; SIF and squashfs images then need --unsquash (package squashfuse)" >&2
    fi
    echo "installed husk in $prefix without setuid: containers run in a user namespace (config $conf)"
fi
