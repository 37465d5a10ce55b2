#!/usr/bin/env python3
"""Where keygate's time goes, against the plain pingora pass-through (P) in the same run.

Samples each server with `perf record` (cpu-clock, every thread of the process) while wrk drives
small GETs at saturation, and while curl uploads a file; groups the samples by what the code is
(keygate's stages, pingora, header maps, allocation, the kernel's TCP, ...) and prints, per
request (per MiB for the upload), the CPU each group costs keygate and P and the difference, then
the symbols that differ most. Run through `bash benches/profile.sh`; the settings are those of
benches/load.sh (SECONDS_PER_RUN, CONNECTIONS, SERVER_CPU, LOAD_CPU, UPLOAD_MIB).

The profile is statistical: a sample stands for 1/FREQ s of CPU, so a group of a few samples
is noise. The sums agree with /proc's CPU time to within a few percent (printed beside them).
"""

import collections
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the harness's servers and set-up)

FREQ = 1999

# What a symbol is, first match wins: (group, dso, pattern on the symbol).
GROUPS = [
    ("kernel: copying bytes to and from sockets", "kernel", r"_copy_(to|from)_iter|copy_user"),
    ("kernel: waking and switching threads", "kernel",
     r"finish_task_switch|_raw_spin_unlock_irqrestore|schedule|futex|try_to_wake_up"),
    ("kernel: TCP, syscalls, epoll", "kernel", r""),
    ("allocation (malloc, free)", "libc", r"malloc|free|_int_|unlink_chunk|tcache|realloc"),
    ("memcpy, memmove, memcmp", "libc", r"mem(cpy|move|cmp|set)"),
    ("libc: system call wrappers", "libc", r""),
    ("clock reads (vDSO)", "vdso", r""),
    ("keygate's stages", "bin", r"keygate::|arc_swap"),
    ("Cedar", "bin", r"cedar"),
    ("caches (moka, its channels)", "bin", r"moka|crossbeam"),
    ("metrics (prometheus)", "bin", r"prometheus"),
    ("header maps, header parsing", "bin", r"http::header|pingora_http|httparse|HeaderName"),
    ("timers (pingora-timeout)", "bin", r"pingora_timeout"),
    ("tokio runtime", "bin", r"tokio::"),
    ("pingora: proxy, HTTP/1, connection pool", "bin", r"pingora"),
    ("buffers (bytes)", "bin", r"bytes::"),
    ("hashing", "bin", r"[Hh]ash|sip"),
    ("other code in the binary", "bin", r""),
    ("other libraries", "other", r""),
]


def dso_kind(dso):
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libc.so"):
        return "libc"
    if dso == "[vdso]":
        return "vdso"
    if dso in ("keygate", "passthrough", "storage-backend", "nginx"):
        return "bin"
    return "other"


def group_of(dso, symbol):
    kind = dso_kind(dso)
    for name, want, pattern in GROUPS:
        if want == kind and re.search(pattern, symbol):
            return name
    return "other libraries"


class Profile:
    """The samples of one perf.data, by (dso, symbol), in CPU seconds."""

    def __init__(self, path):
        out = subprocess.run(
            ["perf", "report", "-i", path, "--no-children", "--sort", "dso,symbol", "-g", "none",
             "-n", "-q", "--percent-limit", "0"],
            capture_output=True, text=True, check=True).stdout
        self.symbols = collections.Counter()
        for line in out.splitlines():
            m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*?)(\s+-\s+-)?\s*$", line)
            if m:
                symbol = re.sub(r"::h[0-9a-f]{16}$", "", m.group(3))
                self.symbols[(m.group(2), symbol)] += int(m.group(1)) / FREQ

    def groups(self):
        out = collections.Counter()
        for (dso, symbol), seconds in self.symbols.items():
            out[group_of(dso, symbol)] += seconds
        return out

    def total(self):
        return sum(self.symbols.values())


def record(server, work, name, drive):
    """Samples `server` while `drive()` runs; returns (what drive returned, profile, CPU seconds
    /proc counted)."""
    path = f"{work}/{name}.perf.data"
    # Every process of the server: nginx serves from its worker, a child of the master.
    perf = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", str(FREQ), "-p",
         ",".join(str(p) for p in server.pids()), "-o", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    before = server.cpu_seconds()
    result = drive()
    used = server.cpu_seconds() - before
    perf.send_signal(signal.SIGINT)
    perf.wait()
    return result, Profile(path), used


def table(unit, per, a_name, a, b_name, b):
    """Rows of CPU per unit by group for profiles `a` and `b`, `per` units each."""
    ga, gb = a.groups(), b.groups()
    scale = 1e6 if unit == "request" else 1e3
    suffix = "µs" if unit == "request" else "ms"
    lines = [f"| CPU per {unit} ({suffix}) | {a_name} | {b_name} | difference |",
             "| --- | ---: | ---: | ---: |"]
    for name, _, _ in GROUPS:
        x, y = ga[name] * scale / per[0], gb[name] * scale / per[1]
        if x or y:
            lines.append(f"| {name} | {x:.2f} | {y:.2f} | {x - y:+.2f} |")
    x, y = a.total() * scale / per[0], b.total() * scale / per[1]
    lines.append(f"| **all** | **{x:.1f}** | **{y:.1f}** | **{x - y:+.1f}** |")
    return lines


def top_symbols(per, a, b, count=20):
    sa, sb = a.symbols, b.symbols
    diff = {k: sa[k] / per[0] - sb[(k[0] if dso_kind(k[0]) != "bin" else "passthrough", k[1])]
            / per[1] for k in sa}
    lines = ["| symbol | keygate (µs) | P (µs) | difference |", "| --- | ---: | ---: | ---: |"]
    for (dso, symbol), d in sorted(diff.items(), key=lambda kv: -kv[1])[:count]:
        pk = (dso if dso_kind(dso) != "bin" else "passthrough", symbol)
        shown = symbol if len(symbol) <= 90 else symbol[:87] + "..."
        lines.append(f"| `{shown}` ({dso_kind(dso)}) | {sa[(dso, symbol)] * 1e6 / per[0]:.2f} "
                     f"| {sb[pk] * 1e6 / per[1]:.2f} | {d * 1e6:+.2f} |")
    return lines


def main():
    a = load.argparse.Namespace(
        bin=sys.argv[sys.argv.index("--bin") + 1], quick=False, rounds=1,
        seconds=int(os.environ.get("SECONDS_PER_RUN", 8)),
        connections=int(os.environ.get("CONNECTIONS", 32)),
        server_cpu=int(os.environ.get("SERVER_CPU", 0)),
        load_cpu=int(os.environ.get("LOAD_CPU", 1)),
        upload_mib=int(os.environ.get("UPLOAD_MIB", 512)))
    bench = load.Bench(a)
    out = []
    try:
        bench.start_backend()
        bench.setup_keygate()
        kg, pt, ngx = bench.start_keygate(), bench.start_passthrough(), bench.start_nginx()
        key = [f"X-API-Key: {bench.key}"]
        small = "/v1/files/local/small.txt"
        load.wrk(a, f"http://127.0.0.1:{kg.port}{small}", headers=key, seconds=1)
        load.wrk(a, f"http://127.0.0.1:{pt.port}{small}", seconds=1)
        load.wrk(a, f"http://127.0.0.1:{ngx.port}{small}", seconds=1)

        got = {}
        for name, server, headers in [("keygate", kg, key), ("P", pt, []), ("nginx", ngx, [])]:
            url = f"http://127.0.0.1:{server.port}{small}"
            got[name] = record(server, bench.work, name, lambda: load.wrk(a, url, headers=headers))
        (rk, pk, uk), (rp, pp, up), (rn, pn, un) = got["keygate"], got["P"], got["nginx"]
        for name, r in [("keygate", rk), ("P", rp), ("nginx", rn)]:
            # A profile of refusals or errors would not be the profile of a forwarded GET.
            assert r["non2xx"] == 0 and r["errors"] == 0, f"{name}: {r}"

        per = (rk["requests"], rp["requests"])
        out += ["### Small GET at saturation: where each request's CPU goes", "",
                f"keygate {rk['rps']:,.0f} requests/s, P {rp['rps']:,.0f} "
                f"(**{rk['rps'] / rp['rps']:.2f} × P**); CPU per request by /proc: keygate "
                f"{uk * 1e6 / per[0]:.1f} µs, P {up * 1e6 / per[1]:.1f} µs. wrk -t1 "
                f"-c{a.connections} -d{a.seconds}s, each server alone on CPU {a.server_cpu} with "
                "the backend.", ""]
        out += table("request", per, "keygate", pk, "P", pp) + [""]
        out += ["The symbols that cost keygate most beyond P (µs per request):", ""]
        out += top_symbols(per, pk, pp) + [""]
        out += ["### Small GET at saturation: the pass-through against nginx", "",
                f"P {rp['rps']:,.0f} requests/s, nginx {rn['rps']:,.0f} (P / nginx "
                f"**{rp['rps'] / rn['rps']:.2f}**); CPU per request by /proc: P "
                f"{up * 1e6 / per[1]:.1f} µs, nginx {un * 1e6 / rn['requests']:.1f} µs "
                "(its worker and master).", ""]
        out += table("request", (rp["requests"], rn["requests"]), "P", pp, "nginx", pn) + [""]

        big = f"{bench.work}/upload.bin"
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(a.upload_mib):
                f.write(chunk)

        def upload(port, headers, name):
            cmd = ["taskset", "-c", str(a.load_cpu), "curl", "-sS", "-o", "/dev/null", "-w",
                   "%{speed_upload} %{http_code}", "-T", big, "-H", "Expect:"]
            for h in headers:
                cmd += ["-H", h]
            cmd.append(f"http://127.0.0.1:{port}/v1/files/local/profile-{name}.bin")
            speed, code = subprocess.run(cmd, capture_output=True, text=True,
                                         check=True).stdout.split()
            assert code in ("200", "201"), code
            return float(speed) / (1 << 20)

        ups = {}
        for name, server, headers in [("keygate", kg, key), ("P", pt, [])]:
            before = bench.backend.cpu_seconds()
            speed, prof, used = record(server, bench.work, f"upload-{name}",
                                       lambda: upload(server.port, headers, name))
            ups[name] = (speed, prof, used, bench.backend.cpu_seconds() - before)
        before = bench.backend.cpu_seconds()
        direct = upload(bench.backend_port, [], "direct")
        direct_cpu = bench.backend.cpu_seconds() - before
        mib = (a.upload_mib, a.upload_mib)
        (sk, fk, uk, bk), (sp, fp, up, bp) = ups["keygate"], ups["P"]
        out += [f"### A {a.upload_mib} MiB upload: where each MiB's CPU goes", "",
                f"keygate {sk:.0f} MiB/s, P {sp:.0f} MiB/s, the backend directly {direct:.0f} "
                f"MiB/s (keygate / direct **{sk / direct:.2f}**, P / direct {sp / direct:.2f}). "
                f"CPU per MiB by /proc: keygate {uk * 1e3 / a.upload_mib:.2f} ms, P "
                f"{up * 1e3 / a.upload_mib:.2f} ms; the backend behind them "
                f"{bk * 1e3 / a.upload_mib:.2f} ms and {bp * 1e3 / a.upload_mib:.2f} ms, "
                f"alone {direct_cpu * 1e3 / a.upload_mib:.2f} ms. curl -T on CPU {a.load_cpu}; "
                f"server and backend share CPU {a.server_cpu}.", ""]
        out += table("MiB", mib, "keygate", fk, "P", fp) + [""]
        for s in (kg, pt, ngx):
            s.stop()
    finally:
        if bench.backend and bench.backend.proc.poll() is None:
            bench.backend.stop()
    print("\n".join(out))
    load.shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
