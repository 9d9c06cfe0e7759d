#!/bin/bash
# Builds the test images with real tools and serves them from two local
# registries. Called by tests/run.sh, as root, after the install:
#     tests/images/setup.sh WORKDIR
# Writes:
#   WORKDIR/images/NAME-oci:TAG        OCI layout    (oci:DIR:TAG)
#   WORKDIR/images/NAME.oci.tar        OCI archive   (oci-archive:FILE)
#   WORKDIR/images/NAME.docker.tar     docker save   (docker-archive:FILE:NAME:TAG)
#   WORKDIR/env                        HUSK_TEST_REGISTRY* lines for run.sh
#   WORKDIR/registry.pids              the registries' pids, for run.sh to kill
# The images come from the Dockerfiles beside this script (one directory
# each), built by buildah from a busybox root made from Debian's
# busybox-static: no network pulls. The registries are Distribution
# (docker-registry) on 127.0.0.1, one anonymous and one behind htpasswd
# basic auth; skopeo pushes every image to both.
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
w=$(cd "$1" && pwd)
tag=latest
images=(layers shellentry shellcmd big)
creds_user=husk-reg
creds_pass='reg pass:1'

export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
buildah_() { buildah --root "$w/storage" --runroot "$w/run" "$@"; }
log() { echo "== images: $*"; }

# --- the busybox base -------------------------------------------------------
ctx=$w/base-context
if [ ! -x "$ctx/rootfs/bin/busybox" ]; then
    log "busybox root"
    rm -rf "$ctx"
    mkdir -p "$ctx/rootfs"
    bb=$(dpkg -L busybox-static | grep -m1 '/bin/busybox$')
    root=$ctx/rootfs
    for d in bin sbin usr/bin usr/sbin etc root tmp home var/tmp; do mkdir -p "$root/$d"; done
    chmod 1777 "$root/tmp" "$root/var/tmp"
    cp "$bb" "$root/bin/busybox"
    # One symlink per applet, where busybox says the applet lives.
    "$bb" --list-full | while read -r applet; do
        [ "${applet##*/}" = busybox ] && continue
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
fi
cp "$here/base/Dockerfile" "$ctx/Dockerfile"

# --- build ------------------------------------------------------------------
build() { # NAME CONTEXT
    buildah_ bud --pull=never --layers --quiet -t "localhost/husk-test/$1:$tag" -f "$2/Dockerfile" "$2" >/dev/null
}
log "build base"
build base "$ctx"
for name in "${images[@]}"; do
    log "build $name"
    build "$name" "$here/$name"
done

# --- write the file forms ---------------------------------------------------
out=$w/images
mkdir -p "$out"
for name in "${images[@]}"; do
    ref=localhost/husk-test/$name:$tag
    # Written again only when the image changed (a re-run after an edit).
    id=$(buildah_ images --quiet --no-trunc "$ref")
    if [ "$(cat "$out/$name.id" 2>/dev/null)" != "$id" ]; then
        log "write $name as oci, oci-archive, docker-archive"
        rm -rf "$out/$name-oci" "$out/$name.oci.tar" "$out/$name.docker.tar" "$out/$name.id"
        buildah_ push --quiet "$ref" "oci:$out/$name-oci:$tag"
        buildah_ push --quiet "$ref" "oci-archive:$out/$name.oci.tar:$tag"
        buildah_ push --quiet "$ref" "docker-archive:$out/$name.docker.tar:$name:$tag"
        echo "$id" >"$out/$name.id"
    fi
done

# --- registries -------------------------------------------------------------
free_port() { # FROM: the first port from FROM up that nothing listens on
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
start_registry() { # NAME PORT [AUTH-YAML]
    local dir=$w/registry-$1
    rm -rf "$dir"
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
${3:-}
EOF
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    echo $! >>"$w/registry.pids"
    for _ in $(seq 100); do
        curl_ok=$( (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && echo y || true)
        [ -n "$curl_ok" ] && return 0
        sleep 0.1
    done
    echo "registry $1 did not start on port $2:" >&2
    cat "$dir/log" >&2
    return 1
}
if [ -f "$w/registry.pids" ]; then
    xargs -r kill <"$w/registry.pids" 2>/dev/null || true
    rm -f "$w/registry.pids"
fi
anon=$(free_port 5101)
auth=$(free_port $((anon + 1)))
log "registries on 127.0.0.1:$anon (anonymous) and 127.0.0.1:$auth (basic auth)"
htpasswd -Bbc "$w/htpasswd" "$creds_user" "$creds_pass" 2>/dev/null
start_registry anon "$anon"
start_registry auth "$auth" "auth:
  htpasswd:
    realm: husk-test
    path: $w/htpasswd"
for name in "${images[@]}"; do
    log "push $name"
    src=oci:$out/$name-oci:$tag
    skopeo copy -q --dest-tls-verify=false "$src" "docker://127.0.0.1:$anon/husk-test/$name:$tag"
    skopeo copy -q --dest-tls-verify=false --dest-creds "$creds_user:$creds_pass" \
        "$src" "docker://127.0.0.1:$auth/husk-test/$name:$tag"
done

# Shell-quoted: the password has a space and a colon.
{
    printf 'HUSK_TEST_IMAGES=%q\n' "$out"
    printf 'HUSK_TEST_REGISTRY=%q\n' "127.0.0.1:$anon"
    printf 'HUSK_TEST_REGISTRY_AUTH=%q\n' "127.0.0.1:$auth"
    printf 'HUSK_TEST_REGISTRY_CREDS=%q\n' "$creds_user:$creds_pass"
} >"$w/env"

# The test user reads every layout and archive.
chmod -R a+rX "$out"
chmod a+rx "$w"
log "done"
