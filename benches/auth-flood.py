#!/usr/bin/env python3
"""A guessing flood from thousands of addresses, and the office's logins
meanwhile: GUESSERS threads send wrong AUTH PLAIN passwords for alice,
each connection from another 127.53.x.y address (one or two guesses each,
under any lockout), for SECONDS. Meanwhile three users log in with the
right password every 100 ms, one session each time:
  - carol from 127.10.0.7, inside the allow list (127.10.0.0/16);
  - dave from 127.77.0.1, who logged in once before the flood;
  - erin from 127.88.0.1, never seen before (an unknown roaming address).
Prints, per user, logins accepted and refused (454: not checked), and the
guesses judged and refused.

    python3 benches/auth-flood.py          (run cargo build --release first)
"""
import base64, os, socket, subprocess, sys, tempfile, threading, time

GUESSERS = int(os.environ.get("GUESSERS", "64"))
SECONDS = float(os.environ.get("SECONDS", "15"))
PORT = int(os.environ.get("PORT", "2740"))
BIN = os.environ.get("BIN", "target/release/relaygate")

def rg(db, *args, stdin=None):
    subprocess.run([BIN, "--db", db, *args], input=stdin, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)

def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != "-":
            return line

def login(source, user, password):
    """One session: EHLO, AUTH PLAIN, QUIT; the AUTH reply's code."""
    s = socket.create_connection(("127.0.0.1", PORT), source_address=(source, 0), timeout=30)
    try:
        f = s.makefile("r", newline="\r\n")
        reply(f)
        s.sendall(b"EHLO bench.test\r\n"); reply(f)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        s.sendall(f"AUTH PLAIN {token}\r\n".encode())
        code = reply(f)[:3]
        s.sendall(b"QUIT\r\n")
        return code
    finally:
        s.close()

def main():
    work = tempfile.mkdtemp(prefix="relaygate-auth-flood.")
    db = os.path.join(work, "relaygate.db")
    rg(db, "bind", "remove", "127.0.0.1:2525")
    rg(db, "bind", "add", f"127.0.0.1:{PORT}")
    rg(db, "list", "remove", "allow", "127.0.0.0/8")
    rg(db, "list", "add", "allow", "127.10.0.0/16")
    rg(db, "policy", "set", "max-sessions-per-ip", "1000")
    for user in ["alice", "carol", "dave", "erin"]:
        rg(db, "user", "add", user, "--password-stdin", stdin=f"{user} password\n")
    engine = subprocess.Popen([BIN, "--db", db, "serve", "--headless"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        assert login("127.77.0.1", "dave", "dave password") == "235"
        stop = time.time() + SECONDS
        guesses = {"judged": 0, "refused": 0}
        lock = threading.Lock()
        def guesser(i):
            n = 0
            while time.time() < stop:
                n += 1
                k = i * 100_000 + n
                source = f"127.53.{(k >> 8) & 255}.{(k & 255) or 1}"
                try:
                    code = login(source, "alice", f"guess {k}")
                except OSError:
                    continue
                with lock:
                    guesses["judged" if code == "535" else "refused"] += 1
        users = {"carol": ("127.10.0.7", [0, 0]), "dave": ("127.77.0.1", [0, 0]),
                 "erin": ("127.88.0.1", [0, 0])}
        def user(name):
            source, counts = users[name]
            while time.time() < stop:
                code = login(source, name, f"{name} password")
                counts[0 if code == "235" else 1] += 1
                time.sleep(0.1)
        threads = [threading.Thread(target=guesser, args=(i,)) for i in range(GUESSERS)]
        threads += [threading.Thread(target=user, args=(n,)) for n in users]
        for t in threads: t.start()
        for t in threads: t.join()
        print(f"guesses judged {guesses['judged']}, refused unchecked {guesses['refused']}")
        for name, (source, (ok, refused)) in users.items():
            print(f"  {name:5} from {source:11}: {ok} logged in, {refused} refused")
    finally:
        engine.terminate(); engine.wait()

if __name__ == "__main__":
    sys.exit(main())
