#!/usr/bin/env python3
"""Bounded load test of the server's memory under many large request bodies.

Starts `concepts serve` (the release binary) on the parity fixture model, then has CLIENTS
threads each send one chat completion whose body is BODY_MIB MiB (a data URL image over the
image limit, so every admitted request is refused after its body is read), all at once, for
ROUNDS rounds. Samples the server's resident set (VmRSS) every 20 ms from /proc and prints
its peak (VmHWM), the RSS 3 s after the load, and how the requests were answered.

    python3 tools/bench/body_load.py [BIN]       # BIN: target/release/concepts

Environment: CLIENTS=64 BODY_MIB=15 ROUNDS=3.
"""
import base64
import collections
import os
import re
import socket
import subprocess
import sys
import threading
import time

repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "target/release/concepts")
clients = int(os.environ.get("CLIENTS", "64"))
body_mib = int(os.environ.get("BODY_MIB", "15"))
rounds = int(os.environ.get("ROUNDS", "3"))
model = os.path.join(repo, "runtime/tests/fixtures/parity/model")


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    home = subprocess.check_output(["mktemp", "-d"]).decode().strip()
    env = dict(os.environ, CONCEPTS_HOME=home)
    env.pop("CONCEPTS_API_TOKEN", None)
    server = subprocess.Popen(
        [binary, "serve", "--model", model, "--port", "0"],
        stderr=subprocess.PIPE, env=env, text=True)
    line = server.stderr.readline()
    match = re.search(r"http://([0-9.]+):(\d+)", line)
    if not match:
        server.kill()
        sys.exit(f"no address in {line!r}")
    host, port = match.group(1), int(match.group(2))
    pid = server.pid

    # A JSON body of BODY_MIB MiB: one image as a data URL.
    payload_len = body_mib * (1 << 20) - 200
    data = base64.b64encode(b"\0" * (payload_len * 3 // 4)).decode()
    body = ('{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"},'
            '{"type":"image_url","image_url":{"url":"data:image/png;base64,' + data + '"}}]}],'
            '"max_tokens":2}').encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()

    statuses = collections.Counter()
    lock = threading.Lock()

    def client():
        try:
            with socket.create_connection((host, port), timeout=120) as s:
                s.sendall(head)
                try:
                    s.sendall(body)
                except OSError:
                    pass  # refused early: the server closed before the body was sent
                reply = s.recv(64)
            code = reply[9:12].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"
        except OSError as e:
            code = type(e).__name__
        with lock:
            statuses[code] += 1

    samples = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append(status_kib(pid, "VmRSS"))
            time.sleep(0.02)

    idle = status_kib(pid, "VmRSS")
    sampling = threading.Thread(target=sampler)
    sampling.start()
    started = time.time()
    for _ in range(rounds):
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.time() - started
    time.sleep(3)
    after = status_kib(pid, "VmRSS")
    stop.set()
    sampling.join()
    peak = status_kib(pid, "VmHWM")
    server.terminate()
    server.wait(timeout=30)
    subprocess.call(["rm", "-rf", home])
    print(f"clients {clients} x {body_mib} MiB bodies x {rounds} rounds in {elapsed:.1f} s")
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"RSS idle {idle / 1024:.0f} MB, peak {peak / 1024:.0f} MB (sampled max "
          f"{max(samples) / 1024:.0f} MB), 3 s after {after / 1024:.0f} MB")


if __name__ == "__main__":
    main()
