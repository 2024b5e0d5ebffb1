#!/usr/bin/env python3
"""A longlived procyard worker: reads framed jobs on stdin, replies on stdout.

Protocol (see procyard_daemon::protocol): each frame is a big-endian u32 length then bytes.
Per job the daemon sends a JSON header frame ({"type":"job","id":...,"routing_key":...,
"attempt":...}) then a raw payload frame; the worker answers one JSON frame
{"id": ..., "outcome": "done" | "retry" | "fail", "message": ...}. EOF on stdin: exit.
Logs go to stderr: stdout is the protocol.
"""
import json
import os
import struct
import sys
import time

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer


def read_frame():
    header = stdin.read(4)
    if not header:
        return None
    if len(header) < 4:
        raise SystemExit("truncated frame header")
    (length,) = struct.unpack(">I", header)
    body = stdin.read(length)
    if len(body) < length:
        raise SystemExit("truncated frame")
    return body


def write_frame(obj):
    body = json.dumps(obj).encode()
    stdout.write(struct.pack(">I", len(body)) + body)
    stdout.flush()


while True:
    header = read_frame()
    if header is None:
        break
    job = json.loads(header)
    payload = read_frame()
    if payload is None:
        # The daemon went away between a job's header and its payload: never run a job
        # with a payload it was not given.
        raise SystemExit("stdin ended between a job header and its payload")
    text = payload.decode("utf-8", errors="replace")
    # A few payloads change behaviour, for demos and tests.
    if text == "fail":
        write_frame({"id": job["id"], "outcome": "fail", "message": "asked to fail"})
        continue
    if text.startswith("sleep "):
        time.sleep(float(text.split()[1]))
    if text == "garbage":
        stdout.write(b"\xff\xff\xff\xff")
        stdout.flush()
        continue
    if text == "done-then-exit":
        write_frame({"id": job["id"], "outcome": "done"})
        sys.exit(1)
    out_dir = os.environ.get("ECHO_OUT_DIR")
    if out_dir:
        with open(os.path.join(out_dir, job["id"]), "a") as f:
            f.write("x")
    print(f"echo worker: job {job['id']} on {job['routing_key']} (attempt {job['attempt']}): {text}",
          file=sys.stderr, flush=True)
    write_frame({"id": job["id"], "outcome": "done"})
