#!/usr/bin/env bash
# New HTTPS connections per second (a TLS 1.3 handshake, full or resumed, and one small request
# answered 404), ECDSA and RSA: keygate's HTTPS data plane against a bare rustls server with the
# same TLS settings that answers the same 404 (the baseline), in one run:
#
#   bash benches/handshakes.sh
#
# Builds keygate and benches/handshakes.rs in release, makes throwaway certificates with
# openssl, runs each server on CPU 0 and the client (benches/handshakes.rs measure) on CPU 1,
# alternating targets; prints a Markdown table of medians (paste it into docs/benchmarks.md).
# Settings (environment): ROUNDS (3), SECONDS_PER_RUN (5), CONCURRENCY (8).
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/prerequisites.sh
need openssl:openssl python3:python3 taskset:util-linux cmake:cmake

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
cargo build --release --quiet -p keygate --bin keygate --example handshakes
BIN="$CARGO_TARGET_DIR/release"

WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
for kind in ecdsa rsa; do
    if [ "$kind" = ecdsa ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $kind.key 2>/dev/null
    else
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $kind.key 2>/dev/null
    fi
    openssl req -new -key $kind.key -subj /CN=localhost -out $kind.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
    openssl x509 -req -in $kind.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile san.ext -out $kind.pem 2>/dev/null
done
head -c 48 /dev/urandom | base64 > pepper

ROUNDS="${ROUNDS:-3}" SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}" CONCURRENCY="${CONCURRENCY:-8}" \
BIN="$BIN" REPO="$OLDPWD" python3 - <<'PY'
import json, os, re, statistics, subprocess, time

BIN, REPO = os.environ["BIN"], os.environ["REPO"]
ROUNDS, SECS, CONC = int(os.environ["ROUNDS"]), int(os.environ["SECONDS_PER_RUN"]), int(os.environ["CONCURRENCY"])

def start(cmd, pattern, env=None):
    p = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    while True:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[0]} did not start")
        m = re.search(pattern, line)
        if m:
            return p, m.group(1)

def measure(addr, resume):
    cmd = ["taskset", "-c", "1", f"{BIN}/examples/handshakes", "measure", "--target", addr,
           "--ca", "ca.pem", "--seconds", str(SECS), "--concurrency", str(CONC)]
    if resume:
        cmd.append("--resume")
    out = json.loads(subprocess.check_output(cmd, text=True).strip().splitlines()[-1])
    assert out["failed"] == 0 or out["handshakes_per_s"] > 0, out
    return out

rows = []
for kind in ["ecdsa", "rsa"]:
    servers = {}
    servers["bare rustls"] = start([f"{BIN}/examples/handshakes", "bare", "--cert", f"{kind}.pem",
                                    "--key", f"{kind}.key"], r"listening on (\S+)")
    with open(f"{kind}.toml", "w") as f:
        f.write(f'[server]\nthreads = 1\n[database]\nurl = "sqlite://{os.getcwd()}/{kind}.db"\n'
                f'[keys]\npepper_file = "{os.getcwd()}/pepper"\n[policies]\ndir = "{REPO}/policies"\n'
                f'[audit]\noutput = "off"\n[tls]\ncert_file = "{kind}.pem"\nkey_file = "{kind}.key"\n')
    env = dict(os.environ, RUST_LOG="warn")
    servers["keygate"] = start([f"{BIN}/keygate", "--config", f"{kind}.toml", "serve", "--listen",
                                "127.0.0.1:0", "--control-listen", "127.0.0.1:0"],
                               r"data plane listening on https://(\S+)", env)
    for resume in [False, True]:
        results = {name: [] for name in servers}
        for _ in range(ROUNDS):
            for name, (_, addr) in servers.items():
                results[name].append(measure(addr, resume))
        med = {n: statistics.median(r["handshakes_per_s"] for r in rs) for n, rs in results.items()}
        share = statistics.median(r["resumed_share"] for r in results["keygate"])
        rows.append((kind, "resumed" if resume else "full", med["bare rustls"], med["keygate"],
                     med["keygate"] / med["bare rustls"], share))
    for p, _ in servers.values():
        p.terminate()
        p.wait()

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"- command: `bash benches/handshakes.sh` (ROUNDS={ROUNDS} SECONDS_PER_RUN={SECS} CONCURRENCY={CONC})")
print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} × {cpu}")
print("- servers on CPU 0 (keygate: release, 1 worker thread), client on CPU 1; TLS 1.3; medians over rounds\n")
print("| certificate | handshake | bare rustls, connections/s | keygate, connections/s | keygate ÷ bare | resumed share (keygate) |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for kind, mode, bare, kg, ratio, share in rows:
    print(f"| {kind.upper()} | {mode} | {bare:.0f} | {kg:.0f} | {ratio:.2f} | {share:.2f} |")
PY
