#!/usr/bin/env python3
"""A slowloris client for reel's hostile-client test (tests/it/hostile.rs).

Usage: slowloris.py SOURCE_IP PORT CONNECTIONS SECONDS [once]

Opens CONNECTIONS connections from SOURCE_IP to 127.0.0.1:PORT, each sending an unfinished
request header, then for SECONDS keeps them open by sending one more header byte per second
and opens new ones in place of those the server closes (at most 3 x CONNECTIONS in all;
none with `once`).
Loopback only, bounded in count and time, stops by itself. Once the first CONNECTIONS are
opened it prints {"opened", "failed"} on stderr; at the end, one JSON line of counts on stdout:
opened, refused_503 (closed with a 503 answer), closed (closed without an answer, e.g. by the
header read timeout), failed (connect failed 3 times), open_at_end.
"""
import json
import socket
import sys
import time

src, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
counts = {"opened": 0, "refused_503": 0, "closed": 0, "failed": 0, "open_at_end": 0}
budget = n if sys.argv[5:] == ["once"] else 3 * n
socks = []


def open_one():
    """Open one connection. A connect the kernel drops (its accept queue full under load) is
    retried: SYN retransmits land 1, 3 and 7 s in, so each try waits up to 10 s, and up to 3
    tries are made before the connection counts as failed. Failures here are the kernel's, not
    the server's, and the test's counts must not depend on how loaded the machine is."""
    global budget
    budget -= 1
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((src, 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(HEAD)
            s.setblocking(False)
        except OSError:
            s.close()
            continue
        counts["opened"] += 1
        socks.append(s)
        return
    counts["failed"] += 1


def check(s):
    """True if the connection is still open (and got one more byte)."""
    try:
        data = s.recv(256)
    except BlockingIOError:
        data = None
    except OSError:
        data = b""
    if data is not None:
        if data.startswith(b"HTTP/1.1 503"):
            counts["refused_503"] += 1
        else:
            counts["closed"] += 1
        s.close()
        return False
    try:
        s.send(b"a")
    except OSError:
        counts["closed"] += 1
        s.close()
        return False
    return True


end = time.monotonic() + seconds
for _ in range(n):
    open_one()
# Say on stderr that the first connections are open, so a test can wait for this instead of
# guessing (its own requests from the same address would otherwise race for the last places).
print(json.dumps({"opened": counts["opened"], "failed": counts["failed"]}), file=sys.stderr, flush=True)
while time.monotonic() < end:
    time.sleep(1)
    socks = [s for s in socks if check(s)]
    # No new ones in the last 2 s: the count at the end is of connections the server has
    # either taken or turned away, not of ones still in its accept queue.
    while len(socks) < n and budget > 0 and time.monotonic() < end - 2:
        open_one()
socks = [s for s in socks if check(s)]
counts["open_at_end"] = len(socks)
for s in socks:
    s.close()
print(json.dumps(counts), flush=True)
