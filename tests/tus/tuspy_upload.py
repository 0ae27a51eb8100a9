"""Drive reel's tus endpoint with tuspy, a tus client nobody on the project wrote.

Usage: tuspy_upload.py ENDPOINT FILE CHUNK_BYTES STOP1,STOP2,STOP3
       tuspy_upload.py --dedupe ENDPOINT FILE

Upload mode: starts an upload and interrupts it three times, each time with a fresh client
that knows only the upload URL (as after a crash of the client):
  1. the first client stops after reaching STOP1 (tuspy's stop_at);
  2. a second client resumes from the server's offset (HEAD) and stops at STOP2, then a PATCH
     is cut mid-body: a raw connection sends the head and half of a chunk and closes;
  3. a third client resumes from whatever the server kept and stops at STOP3;
  4. a fourth client finishes the upload.
Each resume checks that HEAD's offset is what was sent before. Prints one JSON line:
{"url": ..., "offsets": [...]}.

Dedupe mode: creates an upload that declares the file's sha256 in Upload-Metadata and asks the
offset (HEAD) without sending a byte. Prints {"url": ..., "offset": N, "size": N}.

Only talks to the ENDPOINT given (127.0.0.1 in the tests).
"""

import hashlib
import json
import os
import socket
import sys
import time
from urllib.parse import urlparse

from tusclient import client as tus


def uploader(endpoint, path, chunk, url=None, metadata=None):
    c = tus.TusClient(endpoint)
    return c.uploader(
        path,
        url=url,
        chunk_size=chunk,
        metadata=metadata or {},
        upload_checksum=True,
    )


def cut_patch(url, offset, data):
    """Send a PATCH whose body stops half-way, then close the connection."""
    u = urlparse(url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    head = (
        f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    s.sendall(head.encode() + data[: len(data) // 2])
    s.close()


def main():
    if sys.argv[1] == "--dedupe":
        endpoint, path = sys.argv[2], sys.argv[3]
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        u = uploader(endpoint, path, 1 << 20, metadata={"filename": os.path.basename(path), "sha256": sha})
        u.set_url(u.create_url())
        print(json.dumps({"url": u.url, "offset": u.get_offset(), "size": u.get_file_size()}))
        return

    endpoint, path, chunk, stops = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    stops = [int(s) for s in stops.split(",")]
    assert len(stops) == 3, "three interruptions"
    meta = {"filename": os.path.basename(path), "filetype": "video/mp4"}
    offsets = []

    first = uploader(endpoint, path, chunk, metadata=meta)
    first.upload(stop_at=stops[0])
    url = first.url
    offsets.append(first.offset)

    second = uploader(endpoint, path, chunk, url=url)
    assert second.offset == offsets[-1], (second.offset, offsets)
    second.upload(stop_at=stops[1])
    offsets.append(second.offset)
    data = open(path, "rb").read()
    cut_patch(url, second.offset, data[second.offset : second.offset + chunk])
    # The server keeps what fully arrived of the cut PATCH: half a chunk. Wait (bounded) until
    # it has recorded it, as a client retrying with backoff would.
    want = second.offset + chunk // 2
    deadline = time.monotonic() + 20
    while second.get_offset() != want:
        assert time.monotonic() < deadline, ("the cut PATCH was not recorded", second.get_offset(), want)
        time.sleep(0.02)

    third = uploader(endpoint, path, chunk, url=url)
    assert third.offset == want, (third.offset, want)
    offsets.append(third.offset)
    third.upload(stop_at=max(stops[2], third.offset + 1))
    offsets.append(third.offset)

    last = uploader(endpoint, path, chunk, url=url)
    assert last.offset == offsets[-1], (last.offset, offsets)
    last.upload()
    offsets.append(last.offset)
    assert last.offset == len(data)
    print(json.dumps({"url": url, "offsets": offsets}))


if __name__ == "__main__":
    main()
