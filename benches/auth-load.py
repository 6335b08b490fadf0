#!/usr/bin/env python3
"""Repeated logins: CLIENTS threads each open a session, EHLO, AUTH PLAIN
with the right password, QUIT, again and again for SECONDS; prints AUTH
sessions/s and the engine's peak RSS.

    python3 benches/auth-load.py            (builds nothing: run
                                             cargo build --release first)
"""
import base64, os, socket, subprocess, sys, tempfile, threading, time

CLIENTS = int(os.environ.get("CLIENTS", "8"))
SECONDS = float(os.environ.get("SECONDS", "10"))
PORT = int(os.environ.get("PORT", "2730"))
BIN = os.environ.get("BIN", "target/release/relaygate")

def rg(db, *args, stdin=None):
    subprocess.run([BIN, "--db", db, *args], input=stdin, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != "-":
            return line

def main():
    work = tempfile.mkdtemp(prefix="relaygate-auth-bench.")
    db = os.path.join(work, "relaygate.db")
    rg(db, "bind", "remove", "127.0.0.1:2525")
    rg(db, "bind", "add", f"127.0.0.1:{PORT}")
    rg(db, "policy", "set", "max-sessions-per-ip", "1000")
    rg(db, "user", "add", "alice", "--password-stdin", stdin="correct horse\n")
    engine = subprocess.Popen([BIN, "--db", db, "serve", "--headless"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    token = base64.b64encode(b"\0alice\0correct horse").decode()
    counts = [0] * CLIENTS
    bad = [0]
    stop = time.time() + SECONDS
    def client(i):
        while time.time() < stop:
            s = socket.create_connection(("127.0.0.1", PORT))
            f = s.makefile("r", newline="\r\n")
            reply(f)
            s.sendall(b"EHLO bench.test\r\n"); reply(f)
            s.sendall(f"AUTH PLAIN {token}\r\n".encode())
            r = reply(f)
            if r.startswith("235"):
                counts[i] += 1
            else:
                bad[0] += 1
                if bad[0] == 1:
                    print("first refusal:", r.strip(), file=sys.stderr)
            s.sendall(b"QUIT\r\n"); reply(f)
            s.close()
    peak = [0]
    def sample():
        while time.time() < stop:
            with open(f"/proc/{engine.pid}/status") as st:
                for line in st:
                    if line.startswith("VmRSS:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.05)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=sample))
    t0 = time.time()
    for t in threads: t.start()
    for t in threads: t.join()
    took = time.time() - t0
    engine.terminate(); engine.wait()
    print(f"clients={CLIENTS} auth_sessions={sum(counts)} refused={bad[0]} "
          f"auth_sessions_per_sec={sum(counts) / took:.0f} engine_peak_rss_mib={peak[0] / 1024:.0f}")

if __name__ == "__main__":
    sys.exit(main())
