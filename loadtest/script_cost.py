#!/usr/bin/env python3
"""Redis CPU per purchase of lua/purchase.lua (or a variant of it), on the script alone.

Starts a private redis-server (a free port, a temporary directory, never 6379), seeds one event,
and sends CALLS pipelined EVALSHA calls of N purchases each, built before the clock starts, so
nothing but the script and Redis's own command handling is measured. Prints Redis's CPU (user +
system, from INFO cpu) per purchase. Three modes:
  anon    anonymous purchases (the hot path)
  buyer   each purchase by one of 10,000 buyers, no key
  key     the same, each with a fresh Idempotency-Key (bound in the same call, as on a single
          Redis)
Variants of the script (a part taken out, another layout) are compared by giving their file:
each run starts its own server, so runs compare, and the same mode twice shows the spread
(about 1 us per purchase on the shared 2-core machine).

Usage: python3 loadtest/script_cost.py [--script lua/purchase.lua] [--calls 2000] [--n 50]
       [--mode anon|buyer|key]... [--limit N]   (every mode by default; no limit)
Needs redis-server on PATH; only the standard library.
"""
import argparse
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A minimal RESP2 client: enough for pipelined calls and their replies."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        while True:
            parsed = self._parse(0)
            if parsed is not None:
                value, end = parsed
                self.buf = self.buf[end:]
                return value
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            self.buf += chunk

    def _parse(self, i):
        b = self.buf
        j = b.find(b"\r\n", i)
        if j < 0:
            return None
        kind, line = b[i : i + 1], b[i + 1 : j]
        if kind == b"-":
            return (RuntimeError(line.decode()), j + 2)
        if kind in (b"+", b":"):
            return (line.decode(), j + 2)
        if kind == b"$":
            n = int(line)
            if n < 0:
                return (None, j + 2)
            if len(b) < j + 4 + n:
                return None
            return (b[j + 2 : j + 2 + n], j + 4 + n)
        n, k, items = int(line), j + 2, []
        for _ in range(max(n, 0)):
            parsed = self._parse(k)
            if parsed is None:
                return None
            items.append(parsed[0])
            k = parsed[1]
        return (items, k)

    def call(self, *args):
        self.send(enc(*args))
        value = self.reply()
        if isinstance(value, Exception):
            raise value
        return value


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


def redis_cpu(conn):
    info = conn.call("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def measure(script, label, mode, calls, n, limit):
    work = tempfile.mkdtemp(prefix="ticketd-script-cost.")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", work,
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        conn = None
        for _ in range(200):
            try:
                conn = Conn(port)
                conn.call("PING")
                break
            except (OSError, RuntimeError):
                conn = None
                time.sleep(0.05)
        if conn is None:
            raise SystemExit("redis-server did not start")
        event = "1"
        key = lambda name: "event:{%s}:%s" % (event, name)
        total = calls * n + 10
        ids = ["%s-%07d" % (event, i) for i in range(total)]
        for i in range(0, total, 10_000):
            conn.call("RPUSH", key("tickets"), *ids[i : i + 10_000])
        conn.call("HSET", key("meta"), "capacity", total)
        # As ticketd sends it: the answers' buckets in front (lua/answers.lua).
        shared = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lua",
                                   "answers.lua")).read()
        sha = conn.call("SCRIPT", "LOAD", shared + open(script).read()).decode()
        keys = [key(k) for k in ("tickets", "sold", "batches", "meta", "reserved", "stale",
                                 "buyers", "keys", "keys:ttl")] + ["idempotency:widths"]
        requests = []
        for c in range(calls):
            argv, call_keys = ["cost.%d" % c, n], list(keys)
            if mode != "anon":
                argv += [limit, 86_400_000, event if mode == "key" else ""]
                for i in range(n):
                    buyer = "buyer-%d" % random.randrange(10_000)
                    idem = "k-%d-%d" % (c, i) if mode == "key" else ""
                    argv += [buyer, idem]
            requests.append(enc("EVALSHA", sha, len(call_keys), *call_keys, *argv))
        before = redis_cpu(conn)
        for i in range(0, calls, 20):
            conn.send(b"".join(requests[i : i + 20]))
            for _ in requests[i : i + 20]:
                value = conn.reply()
                if isinstance(value, Exception):
                    raise SystemExit("the script failed: %s" % value)
                if not isinstance(value, list) or value[0] != "1":
                    raise SystemExit("unexpected reply %r" % (value,))
        per = (redis_cpu(conn) - before) * 1e6 / (calls * n)
        print("%-28s %-6s %6.2f us Redis CPU per purchase (%d calls of %d)"
              % (label, mode, per, calls, n))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--script", help="the script to measure (default: lua/purchase.lua)")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--mode", action="append", choices=["anon", "buyer", "key"])
    p.add_argument("--limit", type=int, default=0,
                   help="most tickets per buyer (0: no limit; a limit counts each buyer's tickets)")
    a = p.parse_args()
    script = a.script or os.path.join(here, "..", "lua", "purchase.lua")
    for mode in a.mode or ["anon", "buyer", "key"]:
        measure(script, a.script or "lua/purchase.lua", mode, a.calls, a.n, a.limit)


if __name__ == "__main__":
    main()
