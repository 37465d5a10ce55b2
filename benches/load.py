#!/usr/bin/env python3
"""keygate's load harness. Run it through `bash benches/load.sh`, which installs and builds
what this needs.

Starts the storage-backend, then in front of it, one at a time and with the same settings:
keygate, the plain pingora pass-through (benches/passthrough.rs) and nginx as a plain reverse
proxy; the backend is also measured directly. Every server runs on SERVER_CPU, the load
generator on LOAD_CPU. Each scenario runs ROUNDS rounds, alternating the targets within each
round (A B C D, A B C D, ...) so drift cancels out; the tables show medians over rounds.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib

OPERATOR = "bench-operator-token-0123456789"
PEPPER = "bench-pepper-0123456789abcdef0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Server:
    def __init__(self, name, cmd, port, cpu, workdir, env=None):
        self.name, self.port = name, port
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(cpu)] + cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        wait_port(port)

    def pids(self):
        """The process and its children (nginx's workers)."""
        out = [self.proc.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid:
                        out.append(int(entry))
                except OSError:
                    pass
        return out

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / CLK_TCK

    def status_kib(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def to_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wrk(args, url, connections=None, headers=(), script=None, seconds=None, cpus=None,
        threads=1):
    cmd = ["taskset", "-c", str(cpus or args.load_cpu), "wrk", f"-t{threads}",
           f"-c{connections or args.connections}", f"-d{seconds or args.seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": to_us(lat["50"]),
        "p99": to_us(lat["99"]),
        "non2xx": int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1]),
        "errors": sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
    }


def measure(args, server, url, **kw):
    before, started = server.cpu_seconds(), time.monotonic()
    r = wrk(args, url, **kw)
    used = server.cpu_seconds() - before
    r["cpu_us"] = used * 1e6 / max(r["requests"], 1)
    # Cores the server kept busy, and what it served per core-second it used.
    r["cores"] = used / (time.monotonic() - started)
    r["rps_per_core"] = r["requests"] / used if used else float("nan")
    return r


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req) as r:
        return r.status, r.read()


def unissued_key(rng):
    """A key of keygate's default shape with a valid checksum that was never issued."""
    head = "kg_" + "".join(rng.choice(BASE62) for _ in range(32))
    v = zlib.crc32(head.encode())
    tail = ""
    for _ in range(6):
        tail = BASE62[v % 62] + tail
        v //= 62
    return head + tail


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="keygate-load-")
        self.bin = args.bin
        self.rows = []  # (scenario, target, round, result)
        self.notes = []
        self.backend = None

    # --- set-up -------------------------------------------------------------------------
    def start_backend(self):
        self.backend_port = free_port()
        self.backend = Server(
            "backend",
            [f"{self.bin}/storage-backend", "--root", f"{self.work}/data", "--listen",
             f"127.0.0.1:{self.backend_port}", "--provider", "local"],
            self.backend_port, self.args.server_cpu, self.work)
        base = f"http://127.0.0.1:{self.backend_port}/v1/files/local"
        http("PUT", f"{base}/small.txt", b"x" * 64)
        http("PUT", f"{base}/big.bin", os.urandom(1 << 20))

    def kg_cli(self, *cmd, stdin=None):
        return subprocess.run(
            [f"{self.bin}/keygate", "--config", self.kg_config, *cmd],
            input=stdin, capture_output=True, text=True, check=True).stdout

    def setup_keygate(self):
        policies = f"{self.work}/policies"
        os.makedirs(policies)
        for name in os.listdir("policies"):
            if os.path.isfile(f"policies/{name}"):
                shutil.copy(f"policies/{name}", policies)
        self.kg_port, self.kg_control = free_port(), free_port()
        self.kg_config = f"{self.work}/keygate.toml"
        self.write_kg_config(cache_ttl="5m")
        self.kg_cli("workspaces", "add", "bench")
        self.kg_cli("users", "add", "ada@example.com", "--password-stdin",
                    stdin="a long bench password\n")
        self.kg_cli("members", "add", "--workspace", "bench", "--user", "ada@example.com",
                    "--role", "admin")
        self.kg_cli("providers", "add", "local", "--workspace", "bench")
        made = lambda *a: json.loads(self.kg_cli("keys", "create", "--owner", "ada@example.com",
                                                 "--json", *a))
        key = lambda *a: made(*a)["key"]
        self.key = key("--name", "bench", "--scope", "write")
        self.deny_key = key("--name", "confined", "--scope", "read", "--provider",
                            "local:/backups")
        limited = made("--name", "limited", "--scope", "read")
        self.limited_key, self.limited_id = limited["key"], limited["id"]

    def write_kg_config(self, cache_ttl, rate_limit="", path=None, threads=1, extra=""):
        with open(path or self.kg_config, "w") as f:
            f.write(f"""
{extra}
[server]
threads = {threads}
[database]
url = "sqlite://{self.work}/keygate.db"
[upstream]
peers = ["127.0.0.1:{self.backend_port}"]
[keys]
pepper = "{PEPPER}"
cache_ttl = "{cache_ttl}"
max_active_per_user = 100000
[tokens]
max_scoped_per_user = 100000
[control]
operator_token = "{OPERATOR}"
[policies]
dir = "{self.work}/policies"
# The limits run on every request but are never reached: the harness measures their cost,
# not their effect (see docs/benchmarks.md).
[rate_limit]
default = "1000000000/min"
{rate_limit}
[auth]
failures_per_minute = 1000000000
forbidden_per_minute = 1000000000
[audit]
output = "{self.work}/audit.jsonl"
[log]
level = "warn"
""")

    def start_keygate(self, config=None, name="keygate", cpus=None, binary=None):
        """keygate (this build's, or `binary`) with `config` (the main one by default); another
        config gets ports of its own, so two keygates can run side by side on the same
        database."""
        port, control = (self.kg_port, self.kg_control) if config is None \
            else (free_port(), free_port())
        return Server(
            name,
            [binary or f"{self.bin}/keygate", "--config", config or self.kg_config, "serve", "--listen",
             f"127.0.0.1:{port}", "--control-listen", f"127.0.0.1:{control}"],
            port, cpus or self.args.server_cpu, self.work)

    def start_passthrough(self, threads=1, cpus=None):
        port = free_port()
        return Server(
            "passthrough",
            [f"{self.bin}/examples/passthrough", "--listen", f"127.0.0.1:{port}", "--upstream",
             f"127.0.0.1:{self.backend_port}", "--threads", str(threads)],
            port, cpus or self.args.server_cpu, self.work)

    def mint_tokens(self, count):
        """Signs in once as the bench user and mints `count` scoped tokens with that sign-in."""
        control = f"http://127.0.0.1:{self.kg_control}"
        body = json.dumps({"email": "ada@example.com", "password": "a long bench password",
                           "device": "load harness"}).encode()
        _, resp = http("POST", f"{control}/v1/auth/login", body,
                       {"Content-Type": "application/json"})
        data = json.loads(resp)["data"]
        access = data.get("accessToken") or data["token"]
        tokens = []
        for i in range(count):
            body = json.dumps({"name": f"bench-{i}", "permissions": ["files.read"],
                               "expiresIn": "1d"}).encode()
            _, resp = http("POST", f"{control}/v1/auth/tokens", body,
                           {"Authorization": f"Bearer {access}",
                            "Content-Type": "application/json"})
            tokens.append(json.loads(resp)["data"]["token"])
        # A token that keygate refused would measure refusals, not requests: check one.
        status, _ = http("GET", f"http://127.0.0.1:{self.kg_port}/v1/files/local/small.txt",
                         headers={"Authorization": f"Bearer {tokens[0]}"})
        assert status == 200, status
        return tokens

    def start_nginx(self, tls=None):
        port = free_port()
        root = f"{self.work}/nginx-{port}"
        listen = f"127.0.0.1:{port}"
        if tls:
            listen += (f" ssl;\n        ssl_certificate {tls}/cert.pem;\n"
                       f"        ssl_certificate_key {tls}/key.pem;\n"
                       "        ssl_protocols TLSv1.3")
        os.makedirs(root, exist_ok=True)
        with open(f"{root}/nginx.conf", "w") as f:
            f.write(f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream backend {{ server 127.0.0.1:{self.backend_port}; keepalive 64; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
""")
        return Server(f"nginx-{port}", ["nginx", "-p", root, "-c", f"{root}/nginx.conf", "-e",
                                f"{root}/error.log"], port, self.args.server_cpu, self.work)

    # --- scenarios ----------------------------------------------------------------------
    def record(self, scenario, target, rnd, result):
        self.rows.append((scenario, target, rnd, result))
        log(f"  {scenario:<28} {target:<12} round {rnd}: {result['rps']:>9.0f} req/s  "
            f"p50 {result['p50']:>8.0f} µs  p99 {result['p99']:>8.0f} µs  "
            f"cpu {result.get('cpu_us', 0):>6.1f} µs/req  non-2xx {result['non2xx']}")

    def side_by_side(self, servers, path, scenario, headers_for):
        for rnd in range(1, self.args.rounds + 1):
            for name, server in servers:
                url = f"http://127.0.0.1:{server.port}{path}"
                self.record(scenario, name, rnd,
                            measure(self.args, server, url, headers=headers_for(name)))

    def run(self):
        a = self.args
        self.start_backend()
        self.setup_keygate()
        kg = self.start_keygate()
        pt = self.start_passthrough()
        ngx = self.start_nginx()
        key = [f"X-API-Key: {self.key}"]
        with_key = lambda name: key if name == "keygate" else []
        servers = [("keygate", kg), ("passthrough", pt), ("nginx", ngx), ("direct", self.backend)]
        # Warm the caches (credential and decision) before anything is measured.
        wrk(a, f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt", headers=key, seconds=1)

        log("small GET, allowed (credential and decision cached)")
        self.side_by_side(servers, "/v1/files/local/small.txt", "small GET", with_key)
        log("1 MiB GET")
        self.side_by_side(servers, "/v1/files/local/big.bin", "1 MiB GET", with_key)

        log("small GET with a scoped token (verified once, then cached like a key)")
        self.tokens = self.mint_tokens(1000 if not a.quick else 200)
        bearer = [f"Authorization: Bearer {self.tokens[0]}"]
        wrk(a, f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt", headers=bearer, seconds=1)
        self.side_by_side([("keygate", kg), ("passthrough", pt)], "/v1/files/local/small.txt",
                          "small GET, one token", lambda n: bearer if n == "keygate" else [])

        log("every request a different file, never asked for before")
        for rnd in range(1, a.rounds + 1):
            for name, server in [("keygate", kg), ("passthrough", pt)]:
                # Fresh paths every round and target: a path asked for in an earlier round would
                # be answered from the decision cache, and rounds 2 and 3 would not be cold.
                script = f"{self.work}/distinct-{rnd}-{name}.lua"
                with open(script, "w") as f:
                    f.write('local n = 0\nrequest = function()\n  n = n + 1\n'
                            f'  return wrk.format(nil, "/v1/files/local/cold/r{rnd}-{name}/f" '
                            '.. n .. ".txt")\nend\n')
                url = f"http://127.0.0.1:{server.port}/"
                self.record("distinct files", name, rnd,
                            measure(a, server, url, headers=with_key(name), script=script))

        self.shadow_scenario(kg, key)

        log("denied requests (403)")
        for rnd in range(1, a.rounds + 1):
            url = f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt"
            self.record("denied (403)", "keygate", rnd,
                        measure(a, kg, url, headers=[f"X-API-Key: {self.deny_key}"]))

        log("half the requests with well-formed wrong keys")
        def flood_script(seed):
            # Fresh keys for every round: none of them is in the negative cache yet.
            rng = random.Random(seed)
            path = f"{self.work}/flood-{seed}.lua"
            with open(path, "w") as f:
                f.write("local keys = {\n")
                for _ in range(100_000):
                    f.write(f'"{unissued_key(rng)}",\n')
                f.write("}\nlocal n = 0\nrequest = function()\n  n = n % #keys + 1\n"
                        '  return wrk.format(nil, nil, {["X-API-Key"] = keys[n]})\nend\n')
            return path

        url = f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt"
        half = max(a.connections // 2, 1)
        for rnd in range(1, a.rounds + 1):
            for label, other in [("no flood", None), ("flood", flood_script(rnd))]:
                out = {}

                def second():
                    if other:
                        out["other"] = wrk(a, url, connections=half, script=other)
                    else:
                        out["other"] = wrk(a, url, connections=half, headers=key)

                t = threading.Thread(target=second)
                t.start()
                valid = measure(a, kg, url, connections=half, headers=key)
                t.join()
                valid["other_rps"] = out["other"]["rps"]
                self.record(f"valid keys, {label}", "keygate", rnd, valid)

        log("policies reloaded every second")
        stop = threading.Event()

        def reloader():
            path = f"{self.work}/policies/scopes.cedar"
            original = open(path).read()
            n = 0
            while not stop.wait(1.0):
                n += 1
                with open(path, "w") as f:
                    f.write(original + f"\n// reload {n}\n")
            with open(path, "w") as f:
                f.write(original)

        for rnd in range(1, a.rounds + 1):
            url = f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt"
            self.record("small GET, no reloads", "keygate", rnd, measure(a, kg, url, headers=key))
            stop.clear()
            t = threading.Thread(target=reloader)
            t.start()
            self.record("small GET, reload every 1 s", "keygate", rnd,
                        measure(a, kg, url, headers=key))
            stop.set()
            t.join()
        epoch = urllib.request.urlopen(
            f"http://127.0.0.1:{self.kg_control}/metrics").read().decode()
        m = re.search(r"^keygate_policy_epoch (\d+)", epoch, re.M)
        self.notes.append(f"policy epoch after the reload scenario: {m.group(1) if m else '?'}")

        log("open loop at half the pass-through's saturation")
        p_sat = statistics.median(r["rps"] for s, t, _, r in self.rows
                                  if s == "small GET" and t == "passthrough")
        rate = int(p_sat / 2)
        for rnd in range(1, a.rounds + 1):
            for name, server in [("keygate", kg), ("passthrough", pt)]:
                cmd = ["taskset", "-c", str(a.load_cpu), f"{self.bin}/examples/openloop",
                       "--addr", f"127.0.0.1:{server.port}", "--path", "/v1/files/local/small.txt",
                       "--rate", str(rate), "--seconds", str(a.seconds), "--connections",
                       str(a.connections)]
                if name == "keygate":
                    cmd += ["-H", key[0]]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                f = dict(kv.split("=") for kv in out.split())
                self.record(f"open loop {rate}/s", name, rnd, {
                    "rps": int(f["ok"]) / a.seconds, "p50": float(f["p50_us"]),
                    "p99": float(f["p99_us"]), "non2xx": int(f["errors"]),
                    "requests": int(f["sent"]), "lag_p50": float(f["lag_p50_us"]),
                    "lag_p99": float(f["lag_p99_us"])})

        pt.stop()
        ngx.stop()
        kg.stop()

        log("every request a different valid key (identity cache misses)")
        count = 1000 if not a.quick else 200
        kg = self.start_keygate()
        control = f"http://127.0.0.1:{self.kg_control}/v1/keys"
        keys = []
        for i in range(count):
            body = json.dumps({"name": f"k{i}", "scopes": ["write"],
                               "owner": "ada@example.com"}).encode()
            _, resp = http("POST", control, body, {"Authorization": f"Bearer {OPERATOR}",
                                                   "Content-Type": "application/json"})
            keys.append(json.loads(resp)["data"]["key"])
        kg.stop()
        many = f"{self.work}/many.lua"
        with open(many, "w") as f:
            f.write("local keys = {\n" + "".join(f'"{k}",\n' for k in keys) + "}\n"
                    "local n = 0\nrequest = function()\n  n = n % #keys + 1\n"
                    '  return wrk.format(nil, nil, {["X-API-Key"] = keys[n]})\nend\n')
        many_tokens = f"{self.work}/many-tokens.lua"
        with open(many_tokens, "w") as f:
            f.write("local tokens = {\n" + "".join(f'"{t}",\n' for t in self.tokens) + "}\n"
                    "local n = 0\nrequest = function()\n  n = n % #tokens + 1\n"
                    '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[n]})'
                    "\nend\n")
        # A verified key stays cached for 1 ms only: every request looks its key up again.
        self.write_kg_config(cache_ttl="1ms")
        kg = self.start_keygate()
        pt = self.start_passthrough()
        url_path = "/v1/files/local/small.txt"
        for rnd in range(1, a.rounds + 1):
            for name, server in [("keygate", kg), ("passthrough", pt)]:
                url = f"http://127.0.0.1:{server.port}{url_path}"
                self.record("different key each request", name, rnd,
                            measure(a, server, url, script=many if name == "keygate" else None))
                self.record("different token each request", name, rnd,
                            measure(a, server, url,
                                    script=many_tokens if name == "keygate" else None))
        pt.stop()
        kg.stop()

        log("1 GiB upload, keygate against direct")
        self.write_kg_config(cache_ttl="5m")
        kg = self.start_keygate()
        big = f"{self.work}/upload.bin"
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(a.upload_mib):
                f.write(chunk)
        rss_before = kg.status_kib("VmHWM:")
        for rnd in range(1, a.rounds + 1):
            for name, port, headers in [("keygate", kg.port, key), ("direct", self.backend_port, [])]:
                self.upload(big, name, rnd, port, headers)
        self.upload_rss_growth = (kg.status_kib("VmHWM:") - rss_before) / 1024
        kg.stop()
        os.remove(big)

        self.tls_scenario(key)
        self.threads_scenario(key)
        self.backend.stop()

    def upload(self, path, name, rnd, port, headers, server=None):
        """PUTs the file at `path` through `port` with curl on the load CPU and records its
        speed (and, given the `server`, that server's CPU per MiB)."""
        cmd = ["taskset", "-c", str(self.args.load_cpu), "curl", "-sS", "-o", "/dev/null",
               "-w", "%{speed_upload} %{http_code}", "-T", path, "-H", "Expect:"]
        for h in headers:
            cmd += ["-H", h]
        cmd.append(f"http://127.0.0.1:{port}/v1/files/local/upload-{name}.bin")
        before = server.cpu_seconds() if server else 0
        speed, code = subprocess.run(cmd, capture_output=True, text=True,
                                     check=True).stdout.split()
        result = {"mib_s": float(speed) / (1 << 20), "code": code}
        if server:
            result["cpu_ms_per_mib"] = (server.cpu_seconds() - before) * 1e3 / (
                os.path.getsize(path) / (1 << 20))
        self.rows.append(("upload", name, rnd, result))
        log(f"  upload {name:<10} round {rnd}: {result['mib_s']:.0f} MiB/s (HTTP {code})")

    def tls_scenario(self, key):
        """Small GETs over HTTPS (keep-alive: the handshake once per connection, then the
        records' encryption), keygate and nginx each against itself over plain HTTP."""
        a = self.args
        log("small GET over HTTPS (ECDSA P-256, TLS 1.3) and over HTTP")
        tls = f"{self.work}/tls"
        os.makedirs(tls, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{tls}/key.pem",
                        "-out", f"{tls}/cert.pem", "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        https_config = f"{self.work}/keygate-tls.toml"
        self.write_kg_config(cache_ttl="5m", path=https_config,
                             extra=f'[tls]\ncert_file = "{tls}/cert.pem"\n'
                                   f'key_file = "{tls}/key.pem"\nhsts_max_age = "0s"\n')
        kg_https = self.start_keygate(config=https_config, name="keygate-https")
        kg = self.start_keygate()
        ngx_https = self.start_nginx(tls=tls)
        ngx = self.start_nginx()
        path = "/v1/files/local/small.txt"
        targets = [("keygate https", kg_https, "https", key), ("keygate", kg, "http", key),
                   ("nginx https", ngx_https, "https", []), ("nginx", ngx, "http", [])]
        for rnd in range(1, a.rounds + 1):
            for name, server, scheme, headers in targets:
                url = f"{scheme}://127.0.0.1:{server.port}{path}"
                self.record("small GET, HTTPS", name, rnd, measure(a, server, url, headers=headers))
        for _, server, _, _ in targets:
            server.stop()

    def threads_scenario(self, key):
        """keygate with 4 worker threads and the pass-through with 4 on both cores, the load
        generator (2 threads) on the same two cores: how a request's cost scales across cores."""
        a = self.args
        log("4 worker threads on 2 cores")
        config = f"{self.work}/keygate-4.toml"
        self.write_kg_config(cache_ttl="5m", path=config, threads=4)
        cpus = f"{a.server_cpu},{a.load_cpu}"
        kg = self.start_keygate(config=config, name="keygate-4", cpus=cpus)
        pt = self.start_passthrough(threads=4, cpus=cpus)
        path = "/v1/files/local/small.txt"
        wrk(a, f"http://127.0.0.1:{kg.port}{path}", headers=key, seconds=1, cpus=cpus)
        for rnd in range(1, a.rounds + 1):
            for name, server, headers in [("keygate", kg, key), ("passthrough", pt, [])]:
                url = f"http://127.0.0.1:{server.port}{path}"
                self.record("small GET, 4 threads", name, rnd,
                            measure(a, server, url, headers=headers, cpus=cpus, threads=2,
                                    connections=64))
        kg.stop()
        pt.stop()

    SHADOW = ('@id("keys-never-purge")\n'
              'forbid (principal is Keygate::ApiKey, action == Keygate::Action::"purgeTrash", '
              'resource);\n\n'
              '@id("outside-base-path")\n'
              'forbid (principal, action, resource is Keygate::Path)\n'
              'when { principal.restricted && principal.providers.contains(resource.provider) && '
              '!(resource in principal.grants) && action != Keygate::Action::"listFolder" };\n')

    def reload_policies(self):
        http("POST", f"http://127.0.0.1:{self.kg_control}/v1/admin/policy/reload", b"",
             {"Authorization": f"Bearer {OPERATOR}"})

    def shadow_scenario(self, kg, key):
        """New files with and without shadow policies (a new forbid and a replaced one),
        alternating within each round. Every measurement starts after a reload, which retires
        every cached decision, and asks for files never asked for since; they share a decision
        class, so Cedar decides the first of each measurement."""
        log("every request a different file, with and without shadow policies")
        script = f"{self.work}/distinct-shadow.lua"
        with open(script, "w") as f:
            f.write('local n = 0\nrequest = function()\n  n = n + 1\n'
                    '  return wrk.format(nil, "/v1/files/local/cold/s" .. n .. ".txt")\nend\n')
        shadow_dir = f"{self.work}/policies/shadow"
        url = f"http://127.0.0.1:{kg.port}/"
        for rnd in range(1, self.args.rounds + 1):
            for name in ["keygate", "keygate+shadow"]:
                if name == "keygate+shadow":
                    os.makedirs(shadow_dir, exist_ok=True)
                    with open(f"{shadow_dir}/candidates.cedar", "w") as f:
                        f.write(self.SHADOW)
                else:
                    shutil.rmtree(shadow_dir, ignore_errors=True)
                self.reload_policies()
                self.record("cold decisions, shadow", name, rnd,
                            measure(self.args, kg, url, headers=key, script=script))
        shutil.rmtree(shadow_dir, ignore_errors=True)
        self.reload_policies()

    def run_shadow_only(self):
        """`ONLY=shadow`: the shadow scenario alone."""
        self.start_backend()
        self.setup_keygate()
        kg = self.start_keygate()
        key = [f"X-API-Key: {self.key}"]
        wrk(self.args, f"http://127.0.0.1:{kg.port}/v1/files/local/small.txt", headers=key,
            seconds=1)
        self.shadow_scenario(kg, key)
        kg.stop()
        self.backend.stop()

    def run_compare_only(self):
        """`ONLY=compare BASELINE=path/to/keygate`: this build's keygate against another
        build of it (the commit before a change), with the pass-through beside them, alternating
        within each round: a small GET, a 1 MiB GET and an upload. Both keygates serve the same
        database and policies."""
        baseline = os.environ["BASELINE"]
        self.start_backend()
        self.setup_keygate()
        other = f"{self.work}/baseline.toml"
        shutil.copy(self.kg_config, other)
        kg = self.start_keygate()
        base = self.start_keygate(config=other, name="baseline", binary=baseline)
        pt = self.start_passthrough()
        key = [f"X-API-Key: {self.key}"]
        servers = [("keygate", kg), ("baseline", base), ("passthrough", pt)]
        with_key = lambda name: [] if name == "passthrough" else key
        for _, server in servers[:2]:
            wrk(self.args, f"http://127.0.0.1:{server.port}/v1/files/local/small.txt",
                headers=key, seconds=1)
        log("small GET")
        self.side_by_side(servers, "/v1/files/local/small.txt", "small GET", with_key)
        log("1 MiB GET")
        self.side_by_side(servers, "/v1/files/local/big.bin", "1 MiB GET", with_key)
        log(f"{self.args.upload_mib} MiB upload")
        big = f"{self.work}/upload.bin"
        with open(big, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(self.args.upload_mib):
                f.write(chunk)
        for rnd in range(1, self.args.rounds + 1):
            for name, server in servers:
                self.upload(big, name, rnd, server.port, with_key(name), server)
        os.remove(big)
        for _, server in servers:
            server.stop()
        self.backend.stop()

    def compare_lines(self):
        lines = ["| scenario | target | requests/s (MiB/s) | p50 µs | p99 µs "
                 "| server CPU µs/request (ms/MiB) |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        names = ["keygate", "baseline", "passthrough"]
        for s in ["small GET", "1 MiB GET"]:
            for t in names:
                v = lambda f: self.med(s, t, f)
                lines.append(f"| {s} | {t} | {v('rps'):,.0f} | {v('p50'):,.0f} "
                             f"| {v('p99'):,.0f} | {v('cpu_us'):,.1f} |")
        for t in names:
            v = lambda f: self.med("upload", t, f)
            lines.append(f"| upload | {t} | {v('mib_s'):,.0f} | | | {v('cpu_ms_per_mib'):.2f} |")
        lines.append("")
        for s, rate, cpu in [("small GET", "rps", "cpu_us"), ("1 MiB GET", "rps", "cpu_us"),
                             ("upload", "mib_s", "cpu_ms_per_mib")]:
            r = lambda t, f: self.med(s, "keygate", f) / self.med(s, t, f)
            lines.append(f"- {s}: keygate / baseline throughput **{r('baseline', rate):.2f}**, "
                         f"CPU **{r('baseline', cpu):.2f}**; keygate / P throughput "
                         f"**{r('passthrough', rate):.2f}**, CPU **{r('passthrough', cpu):.2f}**"
                         f" (baseline / P {self.med(s, 'baseline', rate) / self.med(s, 'passthrough', rate):.2f})")
        return lines

    def run_redis_only(self):
        """`ONLY=redis`: what sharing the limits through Redis costs a request, against limits
        kept in the instance, alternating within each round: a small GET far from its limit
        (Redis's fast path) and requests over their limit (429: a round trip each)."""
        self.start_backend()
        self.setup_keygate()
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        prefix = f"kgbench-{os.getpid()}"
        limited = (f'[[rate_limit.rule]]\nname = "limited"\nkey = "{self.limited_id}"\n'
                   f'limit = "1/min"\n')
        modes = {"local": limited,
                 "redis": (f'backend = "redis"\nredis_url = "{url}"\ninstances = 3\n'
                           f'redis_prefix = "{prefix}"\n{limited}')}
        small = "/v1/files/local/small.txt"
        for rnd in range(1, self.args.rounds + 1):
            for mode, text in modes.items():
                self.write_kg_config(cache_ttl="5m", rate_limit=text)
                kg = self.start_keygate()
                base = f"http://127.0.0.1:{kg.port}"
                key = [f"X-API-Key: {self.key}"]
                wrk(self.args, base + small, headers=key, seconds=1)
                self.record("limits, allowed", mode, rnd,
                            measure(self.args, kg, base + small, headers=key))
                self.record("limits, over the limit (429)", mode, rnd,
                            measure(self.args, kg, base + small,
                                    headers=[f"X-API-Key: {self.limited_key}"]))
                kg.stop()
        self.backend.stop()

    def redis_lines(self):
        lines = []
        for s in ["limits, allowed", "limits, over the limit (429)"]:
            lines += [f"### {s}", "",
                      "| limits | requests/s | p50 µs | p99 µs | server CPU µs/request |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            for t in ["local", "redis"]:
                v = lambda f: self.med(s, t, f)
                lines.append(f"| {t} | {v('rps'):,.0f} | {v('p50'):,.0f} | {v('p99'):,.0f} "
                             f"| {v('cpu_us'):,.1f} |")
            r = lambda f: self.med(s, "redis", f) / self.med(s, "local", f)
            lines += ["", f"redis / local: throughput **{r('rps'):.2f}** ×, CPU per request "
                          f"**{r('cpu_us'):.2f}** ×, p50 **{r('p50'):.2f}** ×.", ""]
        return lines

    def shadow_lines(self):
        s = "cold decisions, shadow"
        k = lambda f: self.med(s, "keygate", f)
        ks = lambda f: self.med(s, "keygate+shadow", f)
        return [f"### {s}", "",
                "| target | requests/s | p50 µs | p99 µs | server CPU µs/request |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| keygate | {k('rps'):,.0f} | {k('p50'):,.0f} | {k('p99'):,.0f} "
                f"| {k('cpu_us'):,.1f} |",
                f"| keygate with shadow policies | {ks('rps'):,.0f} | {ks('p50'):,.0f} "
                f"| {ks('p99'):,.0f} | {ks('cpu_us'):,.1f} |", "",
                f"Every request a different file, with two shadow policies beside the enforced "
                f"set (a new forbid, a replaced forbid). The files share a decision class, so "
                f"Cedar decides the first after each reload and the cache the rest; what shadow "
                f"policies add to a decision Cedar makes is `decide/cold_uncached_shadowed` "
                f"against `decide/cold_uncached` (micro-benchmarks). CPU per "
                f"request **{ks('cpu_us') / k('cpu_us'):.2f}** × without, throughput "
                f"**{ks('rps') / k('rps'):.2f}** ×.", ""]

    # --- report -------------------------------------------------------------------------
    def med(self, scenario, target, field):
        vals = [r[field] for s, t, _, r in self.rows if s == scenario and t == target]
        return statistics.median(vals) if vals else float("nan")

    def first(self, scenario, target, field):
        """Round 1 alone: where a cache could warm between rounds, the figure to trust."""
        vals = [r[field] for s, t, rnd, r in self.rows
                if s == scenario and t == target and rnd == 1]
        return vals[0] if vals else float("nan")

    def summary(self):
        """The table at the top: every scenario against the pass-through (P) and nginx, its
        target, and whether this run met it."""
        m = self.med
        K = lambda s, f="rps": m(s, "keygate", f)
        P = lambda s, f="rps": m(s, "passthrough", f)
        N = lambda s, f="rps": m(s, "nginx", f)
        yes = lambda ok: "yes" if ok else "**no**"
        rows = []
        s = "small GET"
        rows.append((s + " (key cached)", f"{K(s) / P(s):.2f} (CPU {K(s, 'cpu_us') / P(s, 'cpu_us'):.2f})",
                     f"{K(s) / N(s):.2f}", "≥ 0.95 (CPU ≤ 1.05); ≥ 1.0 × nginx",
                     yes(K(s) / P(s) >= 0.95 and K(s, 'cpu_us') / P(s, 'cpu_us') <= 1.05
                         and K(s) / N(s) >= 1.0)))
        s = "1 MiB GET"
        rows.append((s, f"{K(s) / P(s):.2f}", f"{K(s) / N(s):.2f}", "≥ 0.95",
                     yes(K(s) / P(s) >= 0.95)))
        s = "distinct files"
        r1 = self.first(s, "keygate", "rps") / self.first(s, "passthrough", "rps")
        rows.append(("every request a new file, round 1", f"{r1:.2f}", "", "≥ 0.80",
                     yes(r1 >= 0.80)))
        s = "different key each request"
        rows.append(("a different valid key every request", f"{K(s) / P(s):.2f}", "", "≥ 0.50",
                     yes(K(s) / P(s) >= 0.50)))
        s = "small GET, one token"
        rows.append(("one scoped token (cached)", f"{K(s) / P(s):.2f}", "", "as a key", ""))
        s = "different token each request"
        rows.append(("a different token every request", f"{K(s) / P(s):.2f}", "", "", ""))
        nf, fl = "valid keys, no flood", "valid keys, flood"
        rows.append(("valid keys under a wrong-key flood, vs no flood", f"{K(fl) / K(nf):.2f}",
                     "", "≥ 0.80", yes(K(fl) / K(nf) >= 0.80)))
        r0, r1_ = "small GET, no reloads", "small GET, reload every 1 s"
        rows.append(("policies reloaded every second, vs none", f"{K(r1_) / K(r0):.2f}", "",
                     "≥ 0.95", yes(K(r1_) / K(r0) >= 0.95)))
        ol = next((s for s, *_ in self.rows if s.startswith("open loop")), None)
        if ol:
            d50 = K(ol, "p50") - P(ol, "p50")
            ok99 = K(ol, "p99") <= max(1.10 * P(ol, "p99"), P(ol, "p99") + 50)
            rows.append((f"open loop at half P's saturation: p50, p99",
                         f"{d50:+.0f} µs, {K(ol, 'p99') / P(ol, 'p99'):.2f} ×", "",
                         "p50 ≤ P + 10 µs; p99 ≤ max(1.10 × P, P + 50 µs)",
                         yes(d50 <= 10 and ok99)))
        up = m("upload", "keygate", "mib_s") / m("upload", "direct", "mib_s")
        rows.append((f"{self.args.upload_mib} MiB upload, vs the backend directly",
                     f"{up:.2f} (RSS +{self.upload_rss_growth:.1f} MiB)", "",
                     "≥ 0.90; RSS ≤ +32 MiB", yes(up >= 0.90 and self.upload_rss_growth <= 32)))
        s = "small GET, HTTPS"
        rows.append(("small GET over HTTPS, vs keygate over HTTP",
                     f"{m(s, 'keygate https', 'rps') / m(s, 'keygate', 'rps'):.2f}",
                     f"{m(s, 'keygate https', 'rps') / m(s, 'nginx https', 'rps'):.2f} "
                     "(both HTTPS)", "", ""))
        s = "small GET, 4 threads"
        rows.append(("small GET, 4 threads on 2 cores", f"{K(s) / P(s):.2f}", "", "", ""))
        out = ["## At a glance", "",
               "keygate's throughput over the pass-through's (P: pingora with no authorization) "
               "and over nginx's in the same run; the sections below give every figure and how "
               "it was measured.", "",
               "| scenario | keygate / P | keygate / nginx | target | met |",
               "| --- | ---: | ---: | --- | --- |"]
        out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
        return out + [""]

    def report(self, command):
        a = self.args
        m = self.med
        lines = []
        cpu = "unknown"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
        nginx_version = subprocess.run(["nginx", "-v"], capture_output=True,
                                       text=True).stderr.strip()
        lines += [
            "Produced by the load harness; every figure below comes from one run of it.",
            "",
            f"- command: `{command}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- machine: {os.cpu_count()} × {cpu}, Linux {platform.release()}",
            f"- servers on CPU {a.server_cpu} (the backend too), load generator on CPU "
            f"{a.load_cpu}; {a.rounds} rounds of {a.seconds} s per target and scenario, "
            f"alternating targets; {a.connections} connections; medians over rounds",
            f"- load: {wrk_version.splitlines()[0] if wrk_version else 'wrk'} (closed loop), "
            "benches/openloop.rs (open loop); nginx: " + nginx_version,
            "- keygate: release build, 1 worker thread, SQLite, shipped policies, rate limits "
            "and the per-address throttle on but set too high to trigger, audit log to a file",
            "- pass-through: benches/passthrough.rs, pingora with no authorization, 1 thread; "
            "nginx: 1 worker, upstream keep-alive, no buffering",
            "",
        ]
        P = lambda s, f="rps": m(s, "passthrough", f)
        K = lambda s, f="rps": m(s, "keygate", f)

        def table(scenario, targets):
            out = [f"### {scenario}", "",
                   "| target | requests/s | p50 µs | p99 µs | server CPU µs/request | non-2xx |",
                   "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for t in targets:
                out.append(f"| {t} | {m(scenario, t, 'rps'):,.0f} | {m(scenario, t, 'p50'):,.0f} "
                           f"| {m(scenario, t, 'p99'):,.0f} | {m(scenario, t, 'cpu_us'):,.1f} "
                           f"| {m(scenario, t, 'non2xx'):,.0f} |")
            return out + [""]

        lines += self.summary() + ["## Results", ""]
        for s in ["small GET", "1 MiB GET"]:
            lines += table(s, ["keygate", "passthrough", "nginx", "direct"])
            lines += [f"keygate / pass-through: throughput **{K(s) / P(s):.2f}**, CPU per request "
                      f"**{K(s, 'cpu_us') / P(s, 'cpu_us'):.2f}**; keygate / nginx: throughput "
                      f"**{K(s) / m(s, 'nginx', 'rps'):.2f}**", ""]
        s = "distinct files"
        lines += table(s, ["keygate", "passthrough"])
        f1 = lambda t, f="rps": self.first(s, t, f)
        lines += [f"Every request a different file, never asked for before in this run, in one "
                  f"folder no policy names (the backend answers 404). Each file is a miss of the "
                  f"decision cache's paths but not of its classes: Cedar runs for the first file "
                  f"of the folder and the others are decided alike (docs/policies.md, \"The "
                  f"decision cache\"). A decision Cedar makes afresh is measured by the "
                  f"micro-benchmarks (`decide/cold_uncached`, `admit/cold_decision`). keygate / "
                  f"pass-through **{K(s) / P(s):.2f}** (median of rounds), "
                  f"**{f1('keygate') / f1('passthrough'):.2f}** in round 1 alone; keygate's CPU "
                  f"per request {K(s, 'cpu_us'):,.1f} µs (median), {f1('keygate', 'cpu_us'):,.1f} "
                  f"µs (round 1).", ""]
        lines += self.shadow_lines()
        s = "different key each request"
        lines += table(s, ["keygate", "passthrough"])
        lines += [f"1,000 keys in turn with a 1 ms identity-cache lifetime, so every request looks "
                  f"its key up in SQLite and decides afresh: keygate / pass-through "
                  f"**{K(s) / P(s):.2f}**.", ""]
        s = "small GET, one token"
        lines += table(s, ["keygate", "passthrough"])
        lines += [f"One scoped token (EdDSA JWT) on every request: verified once, then found by the "
                  f"keyed hash of its text like a key: keygate / pass-through **{K(s) / P(s):.2f}**, "
                  f"CPU per request **{K(s, 'cpu_us') / P(s, 'cpu_us'):.2f}**.", ""]
        s = "different token each request"
        lines += table(s, ["keygate", "passthrough"])
        lines += [f"{len(self.tokens):,} scoped tokens in turn with a 1 ms identity-cache lifetime: "
                  f"every request verifies an EdDSA signature, looks its token up in SQLite and "
                  f"decides afresh: keygate / pass-through **{K(s) / P(s):.2f}**.", ""]
        s = "small GET, HTTPS"
        lines += table(s, ["keygate https", "keygate", "nginx https", "nginx"])
        kh, nh = m(s, "keygate https", "rps"), m(s, "nginx https", "rps")
        lines += [f"Over keep-alive connections (one handshake per connection, then the records' "
                  f"encryption): keygate over HTTPS / over HTTP **{kh / m(s, 'keygate', 'rps'):.2f}**, "
                  f"nginx **{nh / m(s, 'nginx', 'rps'):.2f}**; keygate / nginx over HTTPS "
                  f"**{kh / nh:.2f}**. New connections per second (the handshakes) are measured by "
                  f"`benches/handshakes.sh` (above).", ""]
        s = "small GET, 4 threads"
        out = [f"### {s}", "", "Both servers with 4 worker threads on both cores, the load "
               "generator (wrk, 2 threads, 64 connections) on the same cores.", "",
               "| target | requests/s | p99 µs | server CPU µs/request | cores used | "
               "requests/s per core used |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for t in ["keygate", "passthrough"]:
            out.append(f"| {t} | {m(s, t, 'rps'):,.0f} | {m(s, t, 'p99'):,.0f} | "
                       f"{m(s, t, 'cpu_us'):,.1f} | {m(s, t, 'cores'):.2f} | "
                       f"{m(s, t, 'rps_per_core'):,.0f} |")
        one = 1e6 / K("small GET", "cpu_us")
        lines += out + ["", f"keygate / pass-through **{K(s) / P(s):.2f}**; keygate serves "
                        f"{m(s, 'keygate', 'rps_per_core'):,.0f} requests per core-second with 4 "
                        f"threads against {one:,.0f} with 1 thread on one core "
                        f"(**{m(s, 'keygate', 'rps_per_core') / one:.2f}**).", ""]
        lines += table("denied (403)", ["keygate"])
        lines += [f"Denied requests are answered by keygate itself: "
                  f"{K('denied (403)') / K('small GET'):.2f} × the allowed rate.", ""]
        nf, fl = "valid keys, no flood", "valid keys, flood"
        lines += ["### Wrong-key flood", "",
                  "Two load generators at once, each with half the connections: one sends the "
                  "valid key, the other either the valid key too (no flood) or, in turn, 100,000 "
                  "well-formed keys with valid checksums that were never issued (flood; each "
                  "misses the caches and is looked up). The per-address throttle is set too "
                  "high to trigger, as for a flood from many addresses.", "",
                  "| run | valid requests/s | other requests/s | valid p99 µs |",
                  "| --- | ---: | ---: | ---: |",
                  f"| no flood | {K(nf):,.0f} | {K(nf, 'other_rps'):,.0f} | {K(nf, 'p99'):,.0f} |",
                  f"| flood | {K(fl):,.0f} | {K(fl, 'other_rps'):,.0f} | {K(fl, 'p99'):,.0f} |",
                  "", f"Valid throughput under the flood: **{K(fl) / K(nf):.2f}** × no flood.", ""]
        r0, r1 = "small GET, no reloads", "small GET, reload every 1 s"
        lines += ["### Policy reloads", "",
                  "| run | requests/s | p99 µs |", "| --- | ---: | ---: |",
                  f"| no reloads | {K(r0):,.0f} | {K(r0, 'p99'):,.0f} |",
                  f"| a policy file changed every second | {K(r1):,.0f} | {K(r1, 'p99'):,.0f} |",
                  "", f"Throughput while reloading: **{K(r1) / K(r0):.2f}** × ({'; '.join(self.notes)}).",
                  ""]
        ol = next((s for s, *_ in self.rows if s.startswith("open loop")), None)
        if ol:
            lines += [f"### Latency at a fixed rate ({ol[len('open loop '):]}, half the "
                      "pass-through's saturation)", "",
                      "| target | p50 µs | p99 µs | errors | generator's own lag p50, p99 µs |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            for t in ["keygate", "passthrough"]:
                lines.append(f"| {t} | {m(ol, t, 'p50'):,.0f} | {m(ol, t, 'p99'):,.0f} | "
                             f"{m(ol, t, 'non2xx'):,.0f} | {m(ol, t, 'lag_p50'):,.0f}, "
                             f"{m(ol, t, 'lag_p99'):,.0f} |")
            lines += ["", f"keygate − pass-through: p50 **{K(ol, 'p50') - P(ol, 'p50'):+.0f} µs**, "
                          f"p99 **{K(ol, 'p99') - P(ol, 'p99'):+.0f} µs** "
                          f"({K(ol, 'p99') / P(ol, 'p99'):.2f} ×).", ""]
        up_k = m("upload", "keygate", "mib_s")
        up_d = m("upload", "direct", "mib_s")
        lines += [f"### {a.upload_mib} MiB upload", "",
                  "| target | MiB/s |", "| --- | ---: |",
                  f"| keygate | {up_k:,.0f} |", f"| direct | {up_d:,.0f} |", "",
                  f"keygate / direct: **{up_k / up_d:.2f}**; keygate's peak RSS grew by "
                  f"**{self.upload_rss_growth:.1f} MiB** over the uploads.", ""]
        return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    args = p.parse_args()
    env = os.environ
    quick = env.get("QUICK") == "1"
    args.quick = quick
    args.rounds = int(env.get("ROUNDS", 1 if quick else 3))
    args.seconds = int(env.get("SECONDS_PER_RUN", 3 if quick else 8))
    args.connections = int(env.get("CONNECTIONS", 32))
    args.server_cpu = int(env.get("SERVER_CPU", 0))
    args.load_cpu = int(env.get("LOAD_CPU", 1))
    args.upload_mib = int(env.get("UPLOAD_MIB", 256 if quick else 1024))
    out = env.get("OUT", "docs/benchmarks.md")
    bench = Bench(args)
    only = {"shadow": (bench.run_shadow_only, bench.shadow_lines),
            "redis": (bench.run_redis_only, bench.redis_lines),
            "compare": (bench.run_compare_only, bench.compare_lines)}.get(env.get("ONLY"))
    if only:
        try:
            only[0]()
        finally:
            if bench.backend and bench.backend.proc.poll() is None:
                bench.backend.stop()
        print("\n".join(only[1]()))
        shutil.rmtree(bench.work, ignore_errors=True)
        return
    try:
        bench.run()
    finally:
        if bench.backend and bench.backend.proc.poll() is None:
            bench.backend.stop()
    settings = " ".join(f"{k}={env[k]}" for k in
                        ["QUICK", "ROUNDS", "SECONDS_PER_RUN", "CONNECTIONS", "UPLOAD_MIB"]
                        if k in env)
    text = bench.report(f"{settings + ' ' if settings else ''}bash benches/load.sh")
    print(text)
    # The hand-written part of the page (above the marker) is kept; the results are replaced.
    previous = open(out).read() if os.path.exists(out) else ""
    header = previous.split("<!-- results -->")[0] if "<!-- results -->" in previous \
        else "# Benchmarks\n\n"
    with open(out, "w") as f:
        f.write(header + "<!-- results -->\n\n" + text + "\n")
    shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
