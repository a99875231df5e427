#!/usr/bin/env python3
"""CPU used by processes that are NOT part of the benchmark, between two snapshots.

The benchmark box is small (2 vCPU) and may be shared (builds, browsers). This measures how much CPU other
processes took during a wrk run, so that contaminated runs can be retried or at least flagged.

  othercpu.py snap RUN_DIR SCRIPT_PID > A.json
  ... wrk ...
  othercpu.py snap RUN_DIR SCRIPT_PID > B.json
  othercpu.py delta A.json B.json WALL_SECONDS      -> prints % of one core (100 = one core)

Part of the benchmark (excluded): SCRIPT_PID and its descendants (wrk, curl, herd.py), every process whose
command line names RUN_DIR (origin and cache nginx masters, varnishd, the relay and the simulator) and their
descendants (nginx workers, the Varnish child), kernel threads (loopback softirq work: ksoftirqd, kworkers).
Other processes count with utime+stime plus cutime+cstime (children they reaped during the run, e.g. cargo's
rustc), minus what a process that exited during the run had already used at the first snapshot. A process
that appeared during the run counts in full. Approximate (a few % of a core), good enough to flag runs that
shared the CPUs with a build.
"""
import json, os, sys


def snap(run_dir, script_pid):
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        # fields after "(comm)": state ppid ... utime(12) stime(13) cutime(14) cstime(15) ... starttime(20)
        ppid = int(rest[1])
        procs[int(d)] = {"ppid": ppid, "comm": st[st.index("(") + 1:st.rindex(")")], "self": int(rest[11]) + int(rest[12]),
                         "children": int(rest[13]) + int(rest[14]), "start": int(rest[19]),
                         "bench_root": run_dir in cmd or int(d) == script_pid,
                         "kernel": ppid == 2 or int(d) == 2}
    bench = set()
    for pid in procs:
        p, seen = pid, 0
        while p in procs and seen < 64:
            if procs[p]["bench_root"]:
                bench.add(pid)
                break
            p, seen = procs[p]["ppid"], seen + 1
    return {str(pid): {"self": v["self"], "children": v["children"], "start": v["start"], "comm": v["comm"]}
            for pid, v in procs.items() if pid not in bench and not v["kernel"]}


def delta(a, b, wall):
    hz = os.sysconf("SC_CLK_TCK")
    ticks = 0
    top = []
    for pid, v in b.items():
        w = a.get(pid)
        if w is not None and w["start"] == v["start"]:
            d = (v["self"] - w["self"]) + (v["children"] - w["children"])
        else:  # started during the run (or a reused PID)
            d = v["self"] + v["children"]
        ticks += d
        if d > 0:
            top.append((d, pid, v.get("comm", "?")))
    if os.environ.get("OTHERCPU_DEBUG"):
        print("othercpu top:", sorted(top, reverse=True)[:6], file=sys.stderr)
    for pid, w in a.items():
        v = b.get(pid)
        if v is None or v["start"] != w["start"]:
            # exited during the run: its whole life lands in its reaper's cutime; take back what it had used before
            ticks -= w["self"] + w["children"]
    return ticks / hz / wall * 100


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        json.dump(snap(sys.argv[2], int(sys.argv[3])), sys.stdout)
    elif len(sys.argv) == 5 and sys.argv[1] == "delta":
        a, b = (json.load(open(p)) for p in sys.argv[2:4])
        print(f"{delta(a, b, float(sys.argv[4])):.0f}")
    else:
        sys.exit(__doc__)
