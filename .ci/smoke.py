#!/usr/bin/env python3
"""End-to-end check of a built Registro server as it ships: no Rust, no cargo.

    smoke.py chroot BINARY   copy BINARY alone into an empty directory and run
                             it there with chroot(8), exactly as in a FROM
                             scratch image (needs root)
    smoke.py docker IMAGE    run IMAGE with `docker run --network host`, then
                             twice on one named volume with `--data-dir /data`
                             (what the first registered, the second serves)
    smoke.py readme BINARY FILE.md...
                             run every `$ ` command of each file's console
                             blocks that is a curl to localhost:8080, in
                             order, against a fresh BINARY per file, and
                             compare each output with the file's

Either way the server listens on 127.0.0.1:0 (a free port, read back from its
"listening on" line), is driven through the original client's whole flow over
loopback, then stopped with SIGTERM (`docker stop` for the image) while a client
holds an idle keep-alive connection open; it must exit 0 within a second.
The README check keeps the documentation true of the code: its examples are
written against `localhost:8080`, which is replaced by the server's real
address; `lastRenewal` and `Registro-Index` values are compared as "some
number". Other `$ `
lines (a command that needs more than a fresh server) are shown, not run,
and listed as such. Commands run in
a temporary directory, where the server runs too. Two HTML comments, invisible
on the rendered page, prepare what examples need:

    <!-- smoke-file: NAME LINE -->   writes LINE (and a newline) to NAME there
    <!-- smoke-server: ARGS -->      restarts the server with these flags
                                     (split on spaces) for what follows

Standard library only. Exit status 0 when every check passed.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

STARTUP_DEADLINE = 10.0  # seconds for the "listening on" line to appear
STOP_LIMIT = 1.0  # seconds from SIGTERM to exit
LISTENING = re.compile(r"listening on (\S+)\s*$")


class CheckFailed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def say(message):
    print(f"smoke: {message}", flush=True)


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def request(conn, method, path, body=None):
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, resp.getheader("Content-Type", ""), raw


def exercise(addr):
    """The original client's flow, checked step by step; returns the
    connection, still open (idle keep-alive), for the stop check."""
    host, port = split_addr(addr)
    check(host in ("127.0.0.1", "::1"), f"server bound {addr}, not a loopback address")
    conn = http.client.HTTPConnection(host, port, timeout=5)
    root = "/registro/1.0"

    status, ctype, raw = request(conn, "GET", f"{root}/apps")
    check(status == 200, f"GET /apps answered {status}, want 200: {raw!r}")
    check(ctype.startswith("application/json"), f"GET /apps Content-Type {ctype!r}")
    listing = json.loads(raw)
    check(isinstance(listing, dict) and isinstance(listing.get("applications"), list),
          f"GET /apps body is not {{\"applications\": [...]}}: {raw!r}")
    say(f"GET {root}/apps -> 200 {raw.decode()}")

    status, _, raw = request(conn, "POST", f"{root}/apps", {"name": "smoke"})
    check(status == 201, f"POST /apps answered {status}, want 201: {raw!r}")
    instance = {"id": "smoke-1", "ip": "127.0.0.1", "port": 8080}
    status, _, raw = request(conn, "POST", f"{root}/apps/smoke", instance)
    check(status == 201, f"POST /apps/smoke answered {status}, want 201: {raw!r}")
    status, _, raw = request(conn, "PUT", f"{root}/apps/smoke/smoke-1")
    check(status == 204, f"PUT (heartbeat) answered {status}, want 204: {raw!r}")
    status, _, raw = request(conn, "GET", f"{root}/apps/smoke/smoke-1")
    check(status == 200, f"GET the instance answered {status}, want 200: {raw!r}")
    got = json.loads(raw)
    check(got.get("status") == "up", f"instance after a heartbeat: {raw!r}, want status up")
    status, _, raw = request(conn, "GET", f"{root}/apps/nope")
    check(status == 404 and "error" in json.loads(raw), f"unknown app answered {status} {raw!r}")
    status, _, raw = request(conn, "GET", f"{root}/apps")
    names = [a.get("name") for a in json.loads(raw).get("applications", [])]
    check(status == 200 and names == ["smoke"], f"listing after registration: {raw!r}")
    say("register, heartbeat, lookup and listing all answered as the contract says")

    # The operator's routes need no file: the dashboard is in the binary.
    status, ctype, raw = request(conn, "GET", "/healthz")
    check(status == 200 and json.loads(raw) == {"status": "ok"}, f"/healthz: {status} {raw!r}")
    status, ctype, raw = request(conn, "GET", "/")
    check(status == 200 and ctype == "text/html; charset=utf-8" and b"<title>Registro</title>" in raw,
          f"/ (the dashboard): {status} {ctype!r} {raw[:80]!r}")
    status, ctype, raw = request(conn, "GET", "/metrics")
    check(status == 200 and ctype.startswith("text/plain; version=0.0.4"), f"/metrics: {status} {ctype!r}")
    check(b'registro_instances{status="up"} 1' in raw, f"/metrics does not count the instance up: {raw!r}")
    status, ctype, raw = request(conn, "GET", f"{root}/openapi.json")
    check(status == 200 and ctype == "application/json" and json.loads(raw).get("openapi") == "3.1.0",
          f"the OpenAPI document: {status} {ctype!r} {raw[:80]!r}")
    status, ctype, raw = request(conn, "GET", f"{root}/sd/prometheus")
    check(status == 200 and json.loads(raw) == [{"targets": ["127.0.0.1:8080"], "labels": {
        "__meta_registro_app": "smoke", "__meta_registro_instance": "smoke-1",
        "__meta_registro_status": "up"}}], f"Prometheus SD: {status} {raw!r}")
    say("/healthz, the dashboard, /metrics, the OpenAPI document and Prometheus SD served")
    return conn


class LineCollector:
    """Reads a pipe on a thread and keeps its lines, so the child never blocks
    on a full pipe and the caller can wait for a line with a deadline."""

    def __init__(self, pipe):
        self.lines = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe):
        for raw in iter(pipe.readline, b""):
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # end of stream
            self.cond.notify_all()

    def wait_for(self, pattern, deadline):
        with self.cond:
            while True:
                for line in self.lines:
                    if line is None:
                        raise CheckFailed("server's stderr closed before it listened: "
                                          + " | ".join(l for l in self.lines if l))
                    m = pattern.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed("no 'listening on' line within "
                                      f"{STARTUP_DEADLINE:.0f} s: {self.lines!r}")
                self.cond.wait(left)


def run_chroot(binary):
    check(os.geteuid() == 0, "chroot needs root")
    root = tempfile.mkdtemp(prefix="registro-scratch-")
    proc = None
    try:
        shutil.copy2(binary, os.path.join(root, "registro"))
        check(os.listdir(root) == ["registro"], f"chroot root is not empty: {os.listdir(root)}")
        say(f"root {root} holds only registro ({os.path.getsize(binary)} bytes)")
        proc = subprocess.Popen(
            ["chroot", root, "/registro", "--addr", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        logs = LineCollector(proc.stderr)
        addr = logs.wait_for(LISTENING, time.monotonic() + STARTUP_DEADLINE).group(1)
        say(f"chrooted server listening on {addr}")
        conn = exercise(addr)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise CheckFailed("server still running 5 s after SIGTERM")
        elapsed = time.monotonic() - started
        conn.close()
        say(f"SIGTERM -> exit code {code} after {elapsed * 1000:.0f} ms "
            "(an idle keep-alive connection was open)")
        check(code == 0, f"exit code {code} after SIGTERM, want 0; stderr: {logs.lines!r}")
        check(elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to exit, limit {STOP_LIMIT} s")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def docker(*args, check_rc=True):
    out = subprocess.run(["docker", *args], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    if check_rc and out.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def start_container(image, name, docker_args=(), args=()):
    """Runs IMAGE as NAME and answers the address of its "listening on" line."""
    docker("run", "-d", "--network", "host", "--name", name, *docker_args, image,
           "--addr", "127.0.0.1:0", *args)
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        logs = docker("logs", name).stderr
        m = next((LISTENING.search(l) for l in logs.splitlines() if LISTENING.search(l)), None)
        if m:
            return m.group(1)
        state = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        check(state == "true", f"container stopped before listening: {logs!r}")
        check(time.monotonic() < deadline, f"no 'listening on' line: {logs!r}")
        time.sleep(0.05)


def stop_container(name):
    """`docker stop`; answers how long it took and checks the exit code is 0."""
    started = time.monotonic()
    docker("stop", "-t", "10", name)
    elapsed = time.monotonic() - started
    code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    check(code == "0", f"exit code {code} after docker stop, want 0 (137 = killed): "
          f"{docker('logs', name).stderr!r}")
    return elapsed


def run_docker(image):
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
    say(f"image {image}: {size} bytes ({size / 1e6:.2f} MB)")
    name = f"registro-smoke-{os.getpid()}"
    try:
        addr = start_container(image, name)
        say(f"container {name} (PID 1 = registro) listening on {addr}")
        conn = exercise(addr)
        elapsed = stop_container(name)
        conn.close()
        say(f"docker stop took {elapsed * 1000:.0f} ms; exit code 0 "
            "(an idle keep-alive connection was open)")
        check(elapsed < STOP_LIMIT, f"docker stop took {elapsed:.2f} s, limit {STOP_LIMIT} s")
    finally:
        docker("rm", "-f", name, check_rc=False)
    run_docker_data_dir(image)


def run_docker_data_dir(image):
    """The image's /data works as shipped: on a new named volume, a server
    run as the image's user keeps what it was told across a restart."""
    volume = f"registro-smoke-data-{os.getpid()}"
    names = []
    try:
        for turn in (1, 2):
            name = f"{volume}-{turn}"
            names.append(name)
            addr = start_container(image, name, ("-v", f"{volume}:/data"), ("--data-dir", "/data"))
            host, port = split_addr(addr)
            conn = http.client.HTTPConnection(host, port, timeout=5)
            root = "/registro/1.0"
            if turn == 1:
                status, _, raw = request(conn, "POST", f"{root}/apps", {"name": "kept"})
                check(status == 201, f"POST /apps with --data-dir answered {status}: {raw!r}")
                instance = {"id": "k-1", "ip": "127.0.0.1", "port": 8080}
                status, _, raw = request(conn, "POST", f"{root}/apps/kept", instance)
                check(status == 201, f"POST /apps/kept answered {status}: {raw!r}")
            else:
                status, _, raw = request(conn, "GET", f"{root}/apps/kept/k-1")
                check(status == 200, f"after a restart on the volume: {status} {raw!r}")
            conn.close()
            stop_container(name)
        say(f"--data-dir /data on volume {volume}: the registry was kept across a restart")
    finally:
        for name in names:
            docker("rm", "-f", name, check_rc=False)
        docker("volume", "rm", "-f", volume, check_rc=False)


SMOKE_FILE = re.compile(r"^<!-- smoke-file: (\S+) (.*) -->$")
SMOKE_SERVER = re.compile(r"^<!-- smoke-server:(.*)-->$")


def readme_examples(path):
    """The steps of a file, in order: ("run", command, expected output) for
    each `$ ` line of its console blocks, ("file", name, line) and
    ("server", [flags]) for its smoke comments."""
    steps = []
    in_console = False
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            if line.startswith("```"):
                in_console = line.strip() == "```console"
                continue
            if not in_console:
                m = SMOKE_FILE.match(line.strip())
                if m:
                    steps.append(("file", m.group(1), m.group(2)))
                m = SMOKE_SERVER.match(line.strip())
                if m:
                    steps.append(("server", m.group(1).split()))
                continue
            if line.startswith("$ "):
                steps.append(("run", line[2:], []))
            elif steps and steps[-1][0] == "run":
                steps[-1][2].append(line)
    return [(s[0], s[1], "\n".join(s[2])) if s[0] == "run" else s for s in steps]


RENEWAL = re.compile(r'"lastRenewal":\d+')
INDEX = re.compile(r"(?i)^(Registro-Index: )\d+$", re.M)


def some_numbers(text):
    """`lastRenewal` and `Registro-Index` values as "some number": they
    depend on the clock (a new server may start its index from it)."""
    return INDEX.sub(r"\1N", RENEWAL.sub('"lastRenewal":N', text))


class Server:
    """A fresh server on 127.0.0.1:0 in `cwd`, stopped with SIGTERM."""

    def __init__(self, binary, cwd, flags):
        self.proc = subprocess.Popen([binary, "--addr", "127.0.0.1:0", *flags], cwd=cwd,
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        logs = LineCollector(self.proc.stderr)
        self.addr = logs.wait_for(LISTENING, time.monotonic() + STARTUP_DEADLINE).group(1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_readme(binary, docs):
    check(shutil.which("curl"), "curl is needed to run the documentation's examples")
    binary = os.path.abspath(binary)
    total = 0
    for doc in docs:
        steps = readme_examples(doc)
        shown = []
        work = tempfile.mkdtemp(prefix="registro-docs-")
        server = None
        try:
            server = Server(binary, work, [])
            for step in steps:
                if step[0] == "file":
                    with open(os.path.join(work, step[1]), "w", encoding="utf-8") as f:
                        f.write(step[2] + "\n")
                    continue
                if step[0] == "server":
                    server.stop()
                    server = None
                    server = Server(binary, work, step[1])
                    continue
                _, cmd, expected = step
                if not (cmd.startswith("curl ") and "localhost:8080" in cmd):
                    shown.append(cmd)
                    continue
                real = cmd.replace("localhost:8080", server.addr)
                out = subprocess.run(["bash", "-c", real], stdin=subprocess.DEVNULL, cwd=work,
                                     capture_output=True, text=True, timeout=10)
                got = out.stdout.rstrip("\n")
                same = some_numbers(got) == some_numbers(expected)
                check(out.returncode == 0 and same,
                      f"{doc}: example differs from the server:\n  $ {cmd}\n"
                      f"  {doc} says:\n{expected}\n  server said (exit {out.returncode}):\n"
                      f"{got}{out.stderr}")
            runs = sum(1 for s in steps if s[0] == "run") - len(shown)
            say(f"all {runs} examples of {doc} answered as written")
            for cmd in shown:
                say(f"  shown, not run (not a curl to localhost:8080): $ {cmd}")
            total += runs
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(work, ignore_errors=True)
    say(f"{total} examples in {len(docs)} files")


def main(argv):
    modes = {"chroot": 3, "docker": 3, "readme": 4}
    if len(argv) < 2 or argv[1] not in modes or len(argv) < modes[argv[1]] \
            or (argv[1] != "readme" and len(argv) != modes[argv[1]]):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[1] == "chroot":
            run_chroot(argv[2])
        elif argv[1] == "docker":
            run_docker(argv[2])
        else:
            run_readme(argv[2], argv[3:])
    except (CheckFailed, OSError, ValueError, http.client.HTTPException,
            subprocess.TimeoutExpired) as e:
        print(f"smoke: FAILED ({argv[1]}): {e}", file=sys.stderr, flush=True)
        return 1
    say(f"{argv[1]} check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
