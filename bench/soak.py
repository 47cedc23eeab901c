#!/usr/bin/env python3
"""Soak under faults: mixed traffic over three tokengate instances sharing one
Redis and one PostgreSQL, with Redis restarted and tokens revoked and rotated
during the run. Every response is checked against what its request kind
expects; the run fails on any surprise.

    bench/soak.py [--seconds 600] [--workers 8] [--bin target/release/tokengate]

Request kinds and what each must get:
  read          GET a file with a valid read+write token             200
  write         PUT a 1 KiB file with it                              201/204
  forbidden     PUT with a read-only token                            403
  other         GET another project's route with the valid token      403
  bad_token     GET with a random secret, from 127.0.0.2              401, or 429 once that
                                                                      address is over its limit
  traversal     `..`, encoded `/`, bad percent-encoding                400
  no_route      a path no route covers                                404
  smuggle       on a connection of its own, a PUT framed both ways (Content-Length and
                chunked) with a second request hidden after its chunked body, a PUT of
                `up/smuggled`: one answer, 201/204, then the connection closes; and at the
                end no `up/smuggled` file exists upstream (no hidden request ever reached it)
  churn         a token that is revoked during the run: 200 before the revocation was asked,
                401 from 1 s after it answered (DESIGN.md's bound), either in between; each
                such token from an address of its own, so once it is refused its failures
                may also get 429 (the per-address limit), and never anyone else's
  rotated       tokens rotated with a 3 s grace, and their successors: the old secret 200 before
                the rotation was asked, 401 from grace + 1 s after it answered; the new one
                200 from when the rotation answered

Faults: Redis is stopped at 30 % and 60 % of the run, each time for 10 s (a short run: 15 % of
it, so Redis is up again between the outages and at the end; valid tokens must keep
working from the store). No request may take longer than 10 s (the client's timeout).
Memory: each instance's RSS is sampled every 5 s; the growth from the end of the
first fifth of the run to the end must stay under 16 MiB.

Needs: redis-server, nginx, PostgreSQL on 127.0.0.1:5432 (TOKENGATE_TEST_POSTGRES names
another), psql; a release build (built if missing).
"""

import argparse
import http.client
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_TOKEN = "soak-admin-token-" + secrets.token_hex(8)
BOUND = 1.0  # the revocation bound
GRACE = 3.0  # rotation grace
TIMEOUT = 10.0
RSS_GROWTH_LIMIT_MIB = 16


def log(*args):
    print("[soak]", *args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Servers:
    """Redis (restartable), nginx as the upstream, PostgreSQL database, three tokengates."""

    def __init__(self, work, binary):
        self.work = work
        self.binary = binary
        self.procs = []
        self.redis = None
        self.redis_port = free_port()
        self.start_redis()
        self.db = f"tokengate_soak_{os.getpid()}"
        pg = os.environ.get("TOKENGATE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
        subprocess.run(["psql", pg + "/postgres", "-qc", f"CREATE DATABASE {self.db}"], check=True)
        self.pg = pg
        self.up_port = free_port()
        www = os.path.join(work, "www")
        for ns in ("acme/web", "acme/api"):
            os.makedirs(os.path.join(www, "generic", ns, "up"))
            with open(os.path.join(www, "generic", ns, "file"), "wb") as f:
                f.write(b"x" * 1024)
        os.chmod(work, 0o755)
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp;
  server {{
    listen 127.0.0.1:{self.up_port};
    root {www};
    location / {{ dav_methods PUT; create_full_put_path on; client_max_body_size 0; }}
  }}
}}
""")
        os.makedirs(os.path.join(work, "tmp"))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.procs.append(subprocess.Popen(
            [nginx, "-c", f"{work}/nginx.conf", "-p", work, "-g", "daemon off;"],
            stderr=subprocess.DEVNULL))
        wait_port(self.up_port)
        self.gates = []
        for i in range(3):
            self.gates.append(self.start_gate(i))

    def start_redis(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.work],
            stdout=subprocess.DEVNULL)
        wait_port(self.redis_port)

    def stop_redis(self):
        self.redis.kill()
        self.redis.wait()

    def start_gate(self, i):
        port, admin = free_port(), free_port()
        config = os.path.join(self.work, f"proxy-{i}.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
listen = "127.0.0.1:{port}"
log_level = "warn"
failed_auth_per_minute = 60

[admin]
listen = "127.0.0.1:{admin}"
token_env = "SOAK_ADMIN_TOKEN"

[store]
url = "{self.pg}/{self.db}"

[cache]
redis_url = "redis://127.0.0.1:{self.redis_port}/0"

[upstream.up]
url = "http://127.0.0.1:{self.up_port}"

[[route]]
name = "web"
format = "generic"
path = "/generic/acme/web"
namespace = "acme/web"
upstream = "up"

[[route]]
name = "api"
format = "generic"
path = "/generic/acme/api"
namespace = "acme/api"
upstream = "up"
""")
        env = dict(os.environ, SOAK_ADMIN_TOKEN=ADMIN_TOKEN)
        logfile = open(os.path.join(self.work, f"tokengate-{i}.log"), "wb")
        proc = subprocess.Popen([self.binary, "serve", "--config", config], env=env, stderr=logfile)
        self.procs.append(proc)
        wait_port(port)
        wait_port(admin)
        return {"port": port, "admin": admin, "pid": proc.pid, "proc": proc}

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stop_redis()
        subprocess.run(["psql", self.pg + "/postgres", "-qc", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"])


def admin(gate, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", gate["admin"], timeout=TIMEOUT)
    headers = {"PRIVATE-TOKEN": ADMIN_TOKEN}
    if body is not None:
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if r.status >= 300:
        raise SystemExit(f"admin {method} {path}: {r.status} {data[:200]!r}")
    return json.loads(data) if data else None


def create_token(gate, name, scopes, project="acme%2Fweb"):
    t = admin(gate, "POST", f"/api/v4/projects/{project}/deploy_tokens",
              {"name": name, "scopes": scopes})
    return t


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Token:
    """A token the controller may revoke or rotate; times are time.monotonic()."""

    addresses = itertools.count()

    def __init__(self, raw):
        self.id = raw["id"]
        self.secret = raw["token"]
        self.asked = None  # revoke or rotate asked
        self.answered = None  # and answered
        # Its own client address: once revoked, its failures trip the per-address limit
        # (429) for this address only, as for a CI runner of its own.
        n = next(Token.addresses)
        self.source = f"127.1.{n // 250}.{n % 250 + 1}"


class Run:
    def __init__(self, servers, seconds, workers):
        self.s = servers
        self.seconds = seconds
        self.workers = workers
        g0 = servers.gates[0]
        rw = ["read_package_registry", "write_package_registry"]
        self.rw = create_token(g0, "soak-rw", rw)["token"]
        self.ro = create_token(g0, "soak-ro", ["read_package_registry"])["token"]
        self.lock = threading.Lock()
        self.churn = [Token(create_token(g0, f"churn-{i}", rw)) for i in range(4)]
        self.rotating = [Token(create_token(g0, f"rot-{i}", rw)) for i in range(2)]
        self.counts = Counter()
        self.violations = []
        self.hung = 0
        self.retried = 0
        self.redis_down = []
        self.stop = threading.Event()
        self.rss = {i: [] for i in range(3)}

    # ---------------------------------------------------------------- requests

    def request(self, conns, gate_index, method, path, headers, body=None, source=None):
        """One request on a kept-alive connection. A connection the server closed
        while idle (its keep-alive timeout) fails before any answer: like every
        HTTP client, retry that once on a new connection (RFC 9112 9.3.1)."""
        key = (gate_index, source)
        reused = key in conns
        started, ended, status = self.request_once(conns, key, method, path, headers, body, source)
        if reused and status in ("error:RemoteDisconnected", "error:BrokenPipeError",
                                 "error:ConnectionResetError"):
            with self.lock:
                self.retried += 1
            _, ended, status = self.request_once(conns, key, method, path, headers, body, source)
        return started, ended, status

    def request_once(self, conns, key, method, path, headers, body, source):
        gate_index = key[0]
        conn = conns.get(key)
        if conn is None:
            port = self.s.gates[gate_index]["port"]
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=TIMEOUT,
                source_address=(source, 0) if source else None)
            conns[key] = conn
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                del conns[key]
        except (socket.timeout, TimeoutError):
            conn.close()
            del conns[key]
            return started, time.monotonic(), "hung"
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            conn.close()
            del conns[key]
            return started, time.monotonic(), f"error:{type(e).__name__}"
        return started, time.monotonic(), status

    def smuggle(self, gate_index, order):
        """A request-smuggling attempt on a connection of its own: the statuses of
        the answers read until the proxy closed it, or "hung" if it never did."""
        web = "/generic/acme/web"
        auth = f"Host: x\r\nDeploy-Token: {self.rw}\r\n"
        hidden = f"PUT {web}/up/smuggled HTTP/1.1\r\n{auth}Content-Length: 1\r\n\r\nS"
        chunked = "5\r\nhello\r\n0\r\n\r\n"
        framing = [f"Content-Length: {len(chunked) + len(hidden)}\r\n", "Transfer-Encoding: chunked\r\n"]
        if order == "TE.CL":
            framing.reverse()
        attack = f"PUT {web}/up/s HTTP/1.1\r\n{auth}{''.join(framing)}\r\n{chunked}{hidden}"
        port = self.s.gates[gate_index]["port"]
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                sock.sendall(attack.encode())
                while chunk := sock.recv(65536):
                    data += chunk
        except (socket.timeout, TimeoutError):
            return "hung"
        except OSError as e:
            return f"error:{type(e).__name__}"
        return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]

    def check(self, kind, status, ok, detail=""):
        with self.lock:
            self.counts[(kind, str(status))] += 1
            if status == "hung":
                self.hung += 1
            if not ok:
                self.violations.append(f"{kind}: got {status} {detail}")

    def worker(self, n):
        rng = random.Random(n)
        conns = {}
        kinds = ["read"] * 30 + ["write"] * 10 + ["forbidden"] * 5 + ["other"] * 5 + \
            ["bad_token"] * 5 + ["traversal"] * 5 + ["no_route"] * 3 + ["smuggle"] * 2 + \
            ["churn"] * 20 + ["rotated"] * 17
        while not self.stop.is_set():
            kind = rng.choice(kinds)
            g = rng.randrange(3)
            web = "/generic/acme/web"
            if kind == "read":
                _, _, st = self.request(conns, g, "GET", f"{web}/file", {"Deploy-Token": self.rw})
                self.check(kind, st, st == 200)
            elif kind == "write":
                path = f"{web}/up/f{rng.randrange(50)}"
                _, _, st = self.request(conns, g, "PUT", path, {"Deploy-Token": self.rw}, b"y" * 1024)
                self.check(kind, st, st in (201, 204))
            elif kind == "forbidden":
                _, _, st = self.request(conns, g, "PUT", f"{web}/up/ro", {"Deploy-Token": self.ro}, b"z")
                self.check(kind, st, st == 403)
            elif kind == "other":
                _, _, st = self.request(conns, g, "GET", "/generic/acme/api/file", {"Deploy-Token": self.rw})
                self.check(kind, st, st == 403)
            elif kind == "bad_token":
                secret = "tgdt_" + secrets.token_urlsafe(24)
                _, _, st = self.request(conns, g, "GET", f"{web}/file", {"Deploy-Token": secret},
                                        source="127.0.0.2")
                self.check(kind, st, st in (401, 429))
            elif kind == "traversal":
                path = rng.choice([f"{web}/../api/file", f"{web}/..%2Fapi/file",
                                   f"{web}/%2e%2e/api/file", f"{web}/%zz", f"{web}//../api/file"])
                _, _, st = self.request(conns, g, "GET", path, {"Deploy-Token": self.rw})
                self.check(kind, st, st == 400, path)
            elif kind == "no_route":
                _, _, st = self.request(conns, g, "GET", "/etc/passwd", {"Deploy-Token": self.rw})
                self.check(kind, st, st == 404)
            elif kind == "smuggle":
                statuses = self.smuggle(g, rng.choice(["CL.TE", "TE.CL"]))
                self.check(kind, statuses, statuses in ([201], [204]))
            elif kind == "churn":
                with self.lock:
                    t = rng.choice(self.churn)
                start, end, st = self.request(conns, g, "GET", f"{web}/file", {"Deploy-Token": t.secret},
                                              source=t.source)
                self.check_revocable(kind, t, start, end, st, 0.0)
            elif kind == "rotated":
                with self.lock:
                    t = rng.choice(self.rotating)
                start, end, st = self.request(conns, g, "GET", f"{web}/file", {"Deploy-Token": t.secret},
                                              source=t.source)
                self.check_revocable(kind, t, start, end, st, GRACE)

    def check_revocable(self, kind, t, start, end, status, grace):
        """`t` revoked (or rotated with `grace`) at some point, or not (yet)."""
        with self.lock:
            asked, answered = t.asked, t.answered
        if status not in (200, 401, 429):
            self.check(kind, status, False, f"token {t.id}")
        elif status in (401, 429) and (asked is None or end < asked):
            self.check(kind, status, False, f"token {t.id}: denied before any revocation")
        elif status == 200 and answered is not None and start > answered + grace + BOUND:
            self.check(kind, status, False,
                       f"token {t.id}: allowed {start - answered:.2f} s after its revocation answered")
        else:
            self.check(kind, status, True)

    # ---------------------------------------------------------------- control

    def retire(self, pool, keep_for, act, successor):
        """Revokes or rotates (`act`) the oldest live token of the pool named `pool`,
        timing when that was asked and answered, adds the token `successor` makes
        of the answer, and drops tokens answered over `keep_for` seconds ago."""
        with self.lock:
            t = next(t for t in getattr(self, pool) if t.asked is None)
            t.asked = time.monotonic()
        answer = act(t)
        with self.lock:
            t.answered = time.monotonic()
        fresh = Token(successor(answer))
        with self.lock:
            now = time.monotonic()
            setattr(self, pool, [x for x in getattr(self, pool) + [fresh]
                                 if x.answered is None or now - x.answered < keep_for])

    def controller(self):
        """Revokes, rotates and replaces tokens; restarts Redis; samples memory."""
        g = self.s.gates
        began = time.monotonic()
        next_churn = began + 5
        next_rotate = began + 7
        next_sample = began
        faults = [0.3, 0.6]
        outage = min(10.0, 0.15 * self.seconds)
        redis_stopped_at = None
        i = 0
        while not self.stop.is_set():
            now = time.monotonic()
            frac = (now - began) / self.seconds
            if faults and frac >= faults[0] and redis_stopped_at is None:
                faults.pop(0)
                log(f"stopping Redis at {now - began:.0f} s")
                self.s.stop_redis()
                redis_stopped_at = now
            if redis_stopped_at is not None and now - redis_stopped_at >= outage:
                self.s.start_redis()
                log(f"Redis back at {now - began:.0f} s")
                self.redis_down.append((redis_stopped_at - began, now - began))
                redis_stopped_at = None
            if now >= next_churn:
                # Revoke the oldest live churn token through the next instance; a fresh one
                # replaces it. Revoked ones are still tried for 10 s, then dropped.
                i += 1
                gate = g[i % 3]
                self.retire(
                    "churn", 10,
                    lambda t: admin(gate, "DELETE",
                                    f"/api/v4/projects/acme%2Fweb/deploy_tokens/{t.id}"),
                    lambda _: create_token(gate, f"churn-{i}",
                                           ["read_package_registry", "write_package_registry"]))
                next_churn = now + 5
            if now >= next_rotate:
                # Rotate a live token with a 3 s grace; its successor (same id, new secret)
                # joins the pool and must work from the moment the rotation answered.
                i += 1
                gate = g[i % 3]
                self.retire(
                    "rotating", 15,
                    lambda t: admin(gate, "POST",
                                    f"/api/v4/projects/acme%2Fweb/deploy_tokens/{t.id}/rotate?grace=3s"),
                    lambda rotated: rotated)
                next_rotate = now + 7
            if now >= next_sample:
                for n, gate in enumerate(g):
                    self.rss[n].append((now - began, rss_kib(gate["pid"])))
                next_sample = now + 5
            time.sleep(0.05)
        if redis_stopped_at is not None:
            self.s.start_redis()

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(n,)) for n in range(self.workers)]
        ctl = threading.Thread(target=self.controller)
        for t in threads + [ctl]:
            t.start()
        began = time.monotonic()
        while time.monotonic() - began < self.seconds:
            time.sleep(1)
            for n, gate in enumerate(self.s.gates):
                if gate["proc"].poll() is not None:
                    self.violations.append(f"instance {n} exited with {gate['proc'].returncode}")
                    self.stop.set()
        self.stop.set()
        for t in threads + [ctl]:
            t.join()
        return time.monotonic() - began


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/tokengate"))
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "--bin", "tokengate"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="tokengate-soak-")
    servers = Servers(work, args.bin)
    try:
        run = Run(servers, args.seconds, args.workers)
        log(f"running {args.seconds} s, {args.workers} workers, instances on ports "
            + ", ".join(str(g["port"]) for g in servers.gates))
        elapsed = run.run()
    finally:
        servers.stop()
    total = sum(run.counts.values())
    print(f"\nsoak: {elapsed:.0f} s, {total} requests ({total / elapsed:.0f}/s) over 3 instances, "
          f"Redis down {', '.join(f'{a:.0f}-{b:.0f} s' for a, b in run.redis_down) or 'never'}, "
          f"{date()}")
    print("\n| kind | status | count |\n|---|---|---|")
    for (kind, status), n in sorted(run.counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"| {kind} | {status} | {n} |")
    print("\n| instance | RSS after warm-up | RSS at end | growth |\n|---|---|---|---|")
    failed = list(run.violations)
    if os.path.exists(os.path.join(work, "www/generic/acme/web/up/smuggled")):
        failed.append("a smuggled request reached the upstream: up/smuggled exists")
    for n, samples in run.rss.items():
        if len(samples) < 2:
            continue
        warm = next((kib for t, kib in samples if t >= elapsed / 5), samples[0][1])
        end = samples[-1][1]
        growth = (end - warm) / 1024
        print(f"| {n} | {warm / 1024:.1f} MiB | {end / 1024:.1f} MiB | {growth:+.1f} MiB |")
        if growth >= RSS_GROWTH_LIMIT_MIB:
            failed.append(f"instance {n}: RSS grew {growth:.1f} MiB")
    print(f"\nviolations: {len(failed)}, hung: {run.hung}, "
          f"retried on a fresh connection after an idle one was closed: {run.retried}")
    for v in failed[:50]:
        print("  " + v)
    if failed:
        print(f"logs kept in {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


def date():
    return time.strftime("%Y-%m-%d", time.gmtime())


if __name__ == "__main__":
    main()
