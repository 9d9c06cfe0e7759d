#!/bin/bash
# husk against the runtimes a user would pick instead, side by side in one
# run. As root, from the repository:
#
#   bash bench/run.sh            # a Debian minbase root (debootstrap)
#   bash bench/run.sh --quick    # a busybox root, few repetitions (CI)
#   bash bench/run.sh --out FILE # also write the table to FILE
#
# It installs what it needs (apt-get), installs husk into a temporary prefix
# with packaging/install.sh, and runs every container command as the
# unprivileged user $HUSK_BENCH_USER (default husktest). Timings are
# hyperfine medians; the table is Markdown. docs/benchmarks.md explains each
# line. --quick numbers only show that every line still runs.
set -euo pipefail

quick=0
out=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    *) echo "bench/run.sh: unknown option $1 (use --quick, --out FILE)" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (it installs packages and a setuid starter)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
user=${HUSK_BENCH_USER:-husktest}
cache=/var/cache/husk-bench

need=()
for pkg in hyperfine charliecloud-runtime bubblewrap crun debootstrap squashfs-tools umoci skopeo \
    docker-registry busybox-static time gzip python3 util-linux squashfuse; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
# FUSE for user-namespace mode, as on a normal Debian install.
chmod 666 /dev/fuse
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
uhome=$(getent passwd "$user" | cut -d: -f6)

# Not under /tmp: the starter refuses a config whose parents others can write.
work=$(mktemp -d /opt/husk-bench.XXXXXX)
chmod 755 "$work"
reg_pid=
cleanup() {
    [ -z "$reg_pid" ] || kill "$reg_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log() { echo "== $*" >&2; }
as_user() { setpriv --reuid="$user" --regid="$user" --init-groups -- env -i HOME="$uhome" USER="$user" \
    LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$work/run" "$@"; }

log "installing husk into $work/prefix"
mkdir -m 755 "$work/prefix"
packaging/install.sh "$work/prefix" >&2
husk=$work/prefix/bin/husk
starter=$work/prefix/libexec/husk/husk-starter

# --- the root filesystem ---------------------------------------------------
if [ $quick = 1 ]; then
    log "a busybox root"
    root=$work/root
    mkdir -p "$root"/{bin,etc,dev,proc,sys,tmp,home}
    cp /bin/busybox "$root/bin/busybox" # busybox-static
    for a in $("$root/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
    done
    touch "$root"/etc/{passwd,group,hosts,resolv.conf}
    runs=(--warmup 2 --runs 10)
    conv_runs=(--warmup 1 --runs 3)
else
    root=$cache/debian-minbase
    if [ ! -d "$root" ]; then
        mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
        [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
        log "debootstrap --variant=minbase bookworm (once, kept in $cache)"
        mkdir -p "$cache"
        rm -rf "$root.tmp"
        debootstrap --variant=minbase bookworm "$root.tmp" "$mirror" >&2
        mv "$root.tmp" "$root"
    fi
    runs=(--warmup 10 --runs 100)
    conv_runs=(--warmup 1 --runs 5)
fi
chmod 755 "$root"
mkdir -p "$work/run" "$work/results" && chown "$user": "$work/run" "$work/results"

# --- the image: an OCI layout (umoci), a docker-archive (skopeo), a SIF ----
log "image from $root"
umoci init --layout "$work/oci" >&2
umoci new --image "$work/oci:bench" >&2
umoci insert --image "$work/oci:bench" "$root" / >&2
umoci config --image "$work/oci:bench" --config.cmd /bin/sh >&2
skopeo copy -q "oci:$work/oci:bench" "docker-archive:$work/image.tar:bench:latest" >&2
chmod -R a+rX "$work/oci" "$work/image.tar"
mkdir -m 755 "$work/u" && chown "$user": "$work/u"
as_user env HUSK_CACHEDIR="$work/u/cache" "$husk" build -q "$work/u/image.sif" "oci:$work/oci:bench" >&2
sif=$work/u/image.sif
layers=$(python3 - "$work/oci" <<'EOF'
import json, sys
lay = sys.argv[1]
idx = json.load(open(f"{lay}/index.json"))
man = json.load(open(f"{lay}/blobs/sha256/" + idx["manifests"][0]["digest"].split(":")[1]))
print(" ".join(f"{lay}/blobs/sha256/" + l["digest"].split(":")[1] for l in man["layers"]))
EOF
)

# crun: a rootless bundle over the same root, read-only.
crun_ok=0
mkdir "$work/u/bundle"
if (cd "$work/u/bundle" && crun spec --rootless) >&2 && python3 - "$work/u/bundle/config.json" "$root" <<'EOF'
import json, sys
p, root = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["root"] = {"path": root, "readonly": True}
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
json.dump(c, open(p, "w"))
EOF
then
    chown -R "$user": "$work/u/bundle"
    if as_user crun --cgroup-manager=disabled --root "$work/run/crun" run --bundle "$work/u/bundle" probe \
        >"$work/results/crun.err" 2>&1; then
        crun_ok=1
    else
        log "crun could not run here as $user: left out ($(tail -n 1 "$work/results/crun.err"))"
    fi
fi

bench() { # NAME HYPERFINE-ARGS... : one hyperfine run as the user, JSON kept
    local name=$1
    shift
    as_user hyperfine -N --style basic --export-json "$work/results/$name.json" "$@" >&2
}

# --- start-up ----------------------------------------------------------------
log "start-up of /bin/true"
startup=(-n "husk exec IMAGE.sif" "$husk exec $sif /bin/true"
    -n "husk exec DIR" "$husk exec $root /bin/true"
    -n "husk exec -u IMAGE.sif (user namespace, squashfuse)" "$husk exec -u $sif /bin/true"
    -n "husk exec -u DIR (user namespace)" "$husk exec -u $root /bin/true"
    -n "ch-run DIR" "ch-run $root -- /bin/true"
    -n "bwrap --ro-bind DIR /" "bwrap --ro-bind $root / --proc /proc --dev /dev /bin/true")
[ $crun_ok = 0 ] || startup+=(-n "crun run (rootless)" \
    "sh -c 'exec crun --cgroup-manager=disabled --root $work/run/crun run --bundle $work/u/bundle c\$\$'")
bench startup "${runs[@]}" "${startup[@]}"

log "32 concurrent husk exec"
as_user cp "$repo/bench/parallel.sh" "$work/u/parallel.sh"
# Failures first (what failed is logged), then the timing, which goes on
# through failures so that the table still shows them.
fails=0
for _ in 1 2 3 4 5; do
    fails=$((fails + $(as_user sh "$work/u/parallel.sh" -c 32 "$husk" exec "$sif" /bin/true)))
done
par_runs=(--warmup 1 --runs 10)
[ $quick = 1 ] && par_runs=(--warmup 1 --runs 3)
bench parallel "${par_runs[@]}" -i \
    -n "32 × husk exec IMAGE.sif" "sh $work/u/parallel.sh 32 $husk exec $sif /bin/true" \
    -n "32 × ch-run DIR" "sh $work/u/parallel.sh 32 ch-run $root -- /bin/true"

# --- conversion ----------------------------------------------------------------
log "conversion"
c=$work/u
bench convert "${conv_runs[@]}" \
    --prepare "rm -rf $c/cache $c/out.sif $c/unpacked $c/out.sqfs" \
    -n "husk build (docker-archive)" "env HUSK_CACHEDIR=$c/cache $husk build -q $c/out.sif docker-archive:$work/image.tar" \
    -n "husk build (oci)" "env HUSK_CACHEDIR=$c/cache $husk build -q $c/out.sif oci:$work/oci:bench" \
    -n "umoci unpack + mksquashfs gzip" "sh -c 'umoci unpack --rootless --image $work/oci:bench $c/unpacked >/dev/null && mksquashfs $c/unpacked/rootfs $c/out.sqfs -comp gzip -noappend -quiet >/dev/null'" \
    -n "gzip -dc of the layers" "sh -c 'cat $layers | gzip -dc >/dev/null'"
rm -rf "$c/unpacked" "$c/out.sqfs"

log "warm re-pull from a local registry"
port=5200
while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 1)); done
mkdir "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
skopeo copy -q --dest-tls-verify=false "oci:$work/oci:bench" "docker://127.0.0.1:$port/bench:latest" >&2
ref=docker://127.0.0.1:$port/bench:latest
as_user env HUSK_CACHEDIR="$c/pullcache" "$husk" pull -q "$c/pulled.sif" "$ref" >&2
bench repull "${runs[@]}" --prepare "rm -f $c/pulled.sif" \
    -n "husk pull (warm cache)" "env HUSK_CACHEDIR=$c/pullcache $husk pull -q $c/pulled.sif $ref"

# --- memory ------------------------------------------------------------------------
log "peak memory"
# The request the frontend hands over, caught by a stand-in starter, then
# replayed to the real starter: its peak RSS alone (the payload is /bin/true).
mkdir -p "$work/catch/bin" "$work/catch/libexec/husk"
cp "$husk" "$work/catch/bin/husk"
printf '#!/bin/sh\nexec cat <&3 >%s\n' "$c/request" >"$work/catch/libexec/husk/husk-starter"
chmod -R a+rX "$work/catch" && chmod 755 "$work/catch/libexec/husk/husk-starter"
as_user "$work/catch/bin/husk" exec "$sif" /bin/true
starter_kb=$(for _ in 1 2 3 4 5; do
    as_user sh -c '/usr/bin/time -f %M sh -c "exec \"\$0\" 3<&0 </dev/null" "$1" <"$2" 2>&1 >/dev/null | tail -n 1' \
        sh "$starter" "$c/request"
done | sort -n | tail -n 1)
frontend_kb=$(as_user sh -c "rm -rf $c/cache $c/out.sif && HUSK_CACHEDIR=$c/cache /usr/bin/time -f %M $husk build -q $c/out.sif docker-archive:$work/image.tar 2>&1 >/dev/null | tail -n 1")

# --- the table -----------------------------------------------------------------------
if [ $quick = 1 ]; then what="busybox root (--quick: numbers not meaningful)"; else what="Debian bookworm minbase"; fi
python3 "$repo/bench/table.py" "$work" "$what" "$fails" "$starter_kb" "$frontend_kb" \
    "$(du -sb "$root" | cut -f1)" "$(find "$root" | wc -l)" "$(stat -c %s "$sif")" |
    tee ${out:+"$out"}
