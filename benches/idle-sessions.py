#!/usr/bin/env python3
"""Idle sessions: SESSIONS connections (from as many 127.x.y.z addresses,
or ONE=1 for one address) each greeted and past EHLO, then held; prints the
engine's VmRSS/VmHWM before, while held, and 5 s after they close.

    python3 benches/idle-sessions.py        (run cargo build --release first)
"""
import os, socket, subprocess, sys, tempfile, time

SESSIONS = int(os.environ.get("SESSIONS", "10000"))
PORT = int(os.environ.get("PORT", "2750"))
BIN = os.environ.get("BIN", "target/release/relaygate")
ONE = os.environ.get("ONE") == "1"

def rg(db, *args):
    subprocess.run([BIN, "--db", db, *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def memory(pid):
    with open(f"/proc/{pid}/status") as st:
        fields = dict(l.split(":", 1) for l in st if l.startswith(("VmRSS", "VmHWM")))
    return "  ".join(f"{k} {v.strip()}" for k, v in sorted(fields.items()))

def main():
    work = tempfile.mkdtemp(prefix="relaygate-idle.")
    db = os.path.join(work, "relaygate.db")
    rg(db, "bind", "remove", "127.0.0.1:2525")
    rg(db, "bind", "add", f"127.0.0.1:{PORT}")
    rg(db, "policy", "set", "max-sessions", str(SESSIONS + 1000))
    rg(db, "policy", "set", "max-sessions-per-ip", str(SESSIONS + 1000))
    engine = subprocess.Popen([BIN, "--db", db, "serve", "--headless"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        print("before:", memory(engine.pid))
        socks = []
        for i in range(SESSIONS):
            src = "127.0.0.1" if ONE else f"127.{1 + i // 62500}.{(i // 250) % 250 + 1}.{i % 250 + 1}"
            socks.append(socket.create_connection(("127.0.0.1", PORT), source_address=(src, 0)))
        for s in socks:
            s.recv(1000)
        for s in socks:
            s.sendall(b"EHLO idle.test\r\n")
        for s in socks:
            buf = b""
            while b"\n250 " not in b"\n" + buf:
                buf += s.recv(4000)
        time.sleep(2)
        print(f"{len(socks)} held:", memory(engine.pid))
        for s in socks:
            s.close()
        time.sleep(5)
        print("closed:", memory(engine.pid))
    finally:
        engine.terminate(); engine.wait()

if __name__ == "__main__":
    sys.exit(main())
