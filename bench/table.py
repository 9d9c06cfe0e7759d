"""Print bench/run.sh's results as a Markdown table: hyperfine medians,
ratios against the peer each line is judged by, and the machine."""
import json
import os
import platform
import subprocess
import sys

work, what, fails, starter_kb, frontend_kb, root_bytes, root_files, sif_bytes = sys.argv[1:9]


def results(name):
    with open(os.path.join(work, "results", name + ".json")) as f:
        return {r["command"]: r for r in json.load(f)["results"]}


def ms(r):
    return r["median"] * 1000


def version(cmd):
    try:
        env = dict(os.environ, USER=os.environ.get("USER", "root"))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=env)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except OSError:
        return "absent"


def cpu():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def mem_gib():
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return f"{kb / 1024 / 1024:.0f} GiB"


rows = []


def row(what, value, ratio="", target=""):
    rows.append(f"| {what} | {value} | {ratio} | {target} |")


def verdict(ok):
    return "met" if ok else "**missed**"


start = results("startup")
ch = ms(start["ch-run DIR"])
for name, r in start.items():
    ratio = f"{ms(r) / ch:.2f}× ch-run"
    target = ""
    if name == "husk exec IMAGE.sif":
        target = f"≤ 1.0× ch-run: {verdict(ms(r) <= ch)}"
    row(f"start-up, `/bin/true`: {name}", f"{ms(r):.1f} ms ± {r['stddev'] * 1000:.1f}", ratio, target)

par = results("parallel")
for name, r in par.items():
    row(f"start-up: {name}, all done", f"{ms(r):.0f} ms", "", "")
row("start-up: failures among 5 × 32 concurrent husk exec", fails, "", f"0: {verdict(fails == '0')}")

conv = results("convert")
floor = ms(conv["gzip -dc of the layers"])
umoci = ms(conv["umoci unpack + mksquashfs gzip"])
for name, r in conv.items():
    t = ms(r)
    ratio = f"{t / floor:.2f}× gzip -dc"
    target = ""
    if name.startswith("husk build"):
        ratio += f", {umoci / t:.1f}× faster than umoci"
        target = f"≤ 1.5× gzip, ≥ 10× umoci: {verdict(t <= 1.5 * floor and umoci >= 10 * t)}"
    row(f"conversion: {name}", f"{t / 1000:.2f} s", ratio, target)

rp = ms(results("repull")["husk pull (warm cache)"])
row("warm re-pull: `husk pull` of an unchanged image", f"{rp:.1f} ms", "", f"≤ 50 ms: {verdict(rp <= 50)}")
skb, fkb = int(starter_kb), int(frontend_kb)
row("peak RSS: husk-starter, start-up", f"{skb / 1024:.1f} MB", "", f"≤ 4 MB: {verdict(skb <= 4 * 1024)}")
row("peak RSS: husk build (frontend)", f"{fkb / 1024:.0f} MB", "", f"≤ 256 MB: {verdict(fkb <= 256 * 1024)}")

print(f"### husk benchmarks: {what}")
print()
print(f"Image: {int(root_bytes) / 1e6:.0f} MB in {root_files} files; SIF {int(sif_bytes) / 1e6:.0f} MB.")
print()
print("| what | median | ratio | target |")
print("| --- | --- | --- | --- |")
print("\n".join(rows))
print()
crun_err = os.path.join(work, "results", "crun.err")
if "crun run (rootless)" not in start and os.path.exists(crun_err):
    with open(crun_err) as f:
        last = (f.read().strip().splitlines() or ["?"])[-1]
    print(f"crun is left out: it could not run a rootless container here ({last}).")
    print()
husk = os.path.join(work, "prefix/bin/husk")
print(
    f"Machine: {cpu()}, {os.cpu_count()} cores, {mem_gib()}, Linux {platform.release()}. "
    f"{version([husk, 'version'])}; {version(['ch-run', '--version'])} (ch-run); "
    f"{version(['bwrap', '--version'])}; {version(['crun', '--version'])}; "
    f"{version(['umoci', '--version'])}; {version(['mksquashfs', '-version'])}; "
    f"{version(['hyperfine', '--version'])}."
)
