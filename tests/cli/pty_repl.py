#!/usr/bin/env python3
"""pty_repl.py — drives `sere` through a pseudo-terminal, as a person would:
readline prompts and multi-line input, Ctrl-C at the prompt (drops the
line), Ctrl-C during a computation (interrupts it, the REPL goes on),
Ctrl-D (exit status 0), and the history file ($SERE_HISTORY) written by one
session and recalled (Ctrl-P) in the next.
    usage: pty_repl.py path/to/sere scratch-dir"""
import os
import pty
import re
import select
import signal
import sys
import time

SERE, SCRATCH = sys.argv[1], sys.argv[2]
HISTORY = os.path.join(SCRATCH, "history")


class Session:
    def __init__(self):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ.update(SERE_HISTORY=HISTORY, TERM="dumb", INPUTRC="/dev/null")
            os.execv(SERE, [SERE])
        self.seen = ""

    def expect(self, pattern, timeout=10.0):
        """Waits for pattern in the output since the last match; returns that output."""
        end = time.time() + timeout
        while True:
            m = re.search(pattern, self.seen)
            if m:
                text, self.seen = self.seen[: m.end()], self.seen[m.end():]
                return text
            left = end - time.time()
            if left <= 0:
                raise AssertionError("timed out waiting for %r; output so far: %r" % (pattern, self.seen))
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError("sere exited while waiting for %r; output: %r" % (pattern, self.seen))
                self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")

    def send(self, text):
        os.write(self.fd, text.encode())

    def wait(self):
        _, status = os.waitpid(self.pid, 0)
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def main():
    if os.path.exists(HISTORY):
        os.remove(HISTORY)
    s = Session()
    s.expect(r"sere \d+\.\d+\.\d+.*\n> $")
    s.send("1 + 1\r")
    s.expect(r"\n2\n> $")
    s.send("for i = 1, 2 do\r")
    s.expect(r"\n>> $")
    s.send("io.write(i * 10, ' ') end\r")
    s.expect(r"10 20 > $")
    # Ctrl-C with a half-typed line: the line is dropped, a new prompt comes
    s.send("this is half typed")
    s.expect("half typed")
    os.kill(s.pid, signal.SIGINT)
    s.expect(r"\n> $")
    # Ctrl-C at a continuation prompt drops the whole chunk
    s.send("function g()\r")
    s.expect(r"\n>> $")
    os.kill(s.pid, signal.SIGINT)
    s.expect(r"\n> $")
    s.send("print(g)\r")
    s.expect(r"\nnil\n> $")
    # Ctrl-C during a computation interrupts it and the REPL goes on
    s.send("n = 0; while true do n = n + 1 end\r")
    s.expect(r"while true do n = n \+ 1 end\n")
    time.sleep(0.3)
    os.kill(s.pid, signal.SIGINT)
    s.expect(r"interrupted\nstack traceback:[^>]*> $")
    s.send("n > 0\r")
    s.expect(r"\ntrue\n> $")
    s.send("sere.tensor({{1, -2.5}, {3, 4}})\r")
    s.expect(r"tensor\(\[\[ 1\.0000, -2\.5000\],\n        \[ 3\.0000,  4\.0000\]\]\)\n> $")
    s.send("error('shown, not fatal')\r")
    s.expect(r"stdin:1: shown, not fatal\nstack traceback:[^>]*> $")
    s.send("\x04")  # Ctrl-D
    s.expect(r"\n$")
    assert s.wait() == 0, "Ctrl-D must exit with status 0"

    with open(HISTORY) as f:
        history = f.read()
    for entry in ("1 + 1", "for i = 1, 2 do\nio.write(i * 10, ' ') end", "n > 0"):
        assert entry in history, "history lacks %r: %r" % (entry, history)
    assert "half typed" not in history and "function g()" not in history, "cancelled lines in history: %r" % history

    # a new session recalls the previous one's history
    s = Session()
    s.expect(r"\n> $")
    s.send("\x10\x10\r")  # Ctrl-P twice: "sere.tensor(...)" again
    s.expect(r"tensor\(\[\[ 1\.0000, -2\.5000\],\n        \[ 3\.0000,  4\.0000\]\]\)\n> $")
    s.send("\x04")
    assert s.wait() == 0
    print("terminal REPL: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAIL", e)
        sys.exit(1)
