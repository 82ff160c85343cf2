"""Where a command's CPU goes, per process: run one command, sample every process's CPU time
(/proc/PID/stat, every 0.5 s, so processes that exit during the run are counted up to their
last sample), and report CPU-ms per image by process (its command line), with the
machine-wide total (/proc/stat, steal included) for comparison.  Linux only.

For issue #18: the same ``patchbank predict`` on the local engine and on Ray, against a Ray
started beforehand (``ray start --head --num-cpus=2``; stop it with ``ray stop``):

    python benchmarks/bench_cpu_split.py --images 2895 -o benchmarks/results/engine_commands/cpu_split_ray.json -- \\
        patchbank predict MODEL /tmp/archive/test -o /tmp/o -q --overwrite --batch-size 16 \\
        --engine ray --address auto --actors 1 --threads 2
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[str, float]]:
    """pid -> (command line or name, user + system CPU seconds so far)."""
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            stat = Path(d, "stat").read_text()
            cmd = Path(d, "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        out[int(d[6:])] = (cmd or name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def machine() -> tuple[float, float]:
    """(busy CPU seconds since boot, steal seconds since boot), all CPUs."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / TICK, f[7] / TICK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, required=True, help="images the command scores")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    before = processes()
    (b0, s0), t0 = machine(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        last.update(processes())
        time.sleep(0.5)
    (b1, s1), wall = machine(), time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"the command failed (exit {proc.returncode})")
    by_process: dict[str, float] = {}
    for pid, (name, cpu) in last.items():
        spent = cpu - before.get(pid, (name, 0.0))[1]
        if spent > 0:
            key = name.split(" --")[0][:80]
            by_process[key] = by_process.get(key, 0.0) + spent
    n = args.images
    res = {"command": cmd, "images": n, "wall_s": wall, "img_s": n / wall,
           "machine_cpu_ms_per_img": 1000 * (b1 - b0) / n, "steal_ms_per_img": 1000 * (s1 - s0) / n,
           "cpu_ms_per_img_by_process": {k: 1000 * v / n for k, v in
                                         sorted(by_process.items(), key=lambda kv: -kv[1]) if 1000 * v / n >= 0.01}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['img_s']:.1f} img/s, machine {res['machine_cpu_ms_per_img']:.1f} CPU ms/img "
          f"(steal {res['steal_ms_per_img']:.1f})")
    for k, v in list(res["cpu_ms_per_img_by_process"].items())[:12]:
        print(f"  {v:6.2f} ms/img  {k}")


if __name__ == "__main__":
    main()
