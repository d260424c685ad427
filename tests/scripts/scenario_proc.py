"""A process-executor scenario command for the tests: reads the scenario JSON on stdin
and behaves as its ``input["mode"]`` says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def write_pids(path: str, *pids: int) -> None:
    """Write the pids atomically: a reader sees all of them or no file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(str(pid) for pid in pids))
    os.replace(tmp, path)


def main() -> int:
    raw = sys.stdin.read()
    scenario = json.loads(raw)
    data = scenario["input"]
    mode = data.get("mode", "pass")
    if mode == "pass":
        print(json.dumps({"status": "passed", "score": 1.0, "output": {"echo": scenario["id"]}}))
    elif mode == "null":
        print("null")
    elif mode == "fail":
        print(json.dumps({"status": "failed", "score": data.get("score", 0.25)}))
    elif mode == "error":
        print("about to fail", file=sys.stderr)
        print(data.get("message", "boom: the scenario broke"), file=sys.stderr)
        return 3
    elif mode == "bad_json":
        print("this is not json {")
    elif mode == "silent":
        pass
    elif mode == "env":
        print(json.dumps({"output": {"value": os.environ.get(data["name"]), "cwd": os.getcwd()}}))
    elif mode == "sleep":
        write_pids(data["pid_file"], os.getpid())
        time.sleep(data.get("seconds", 60))
        print("null")
    elif mode == "environment":
        print(json.dumps({"status": "passed", "output": dict(os.environ)}))
    elif mode == "orphan":
        # A background helper that keeps stdout open and outlives the command.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        write_pids(data["pid_file"], os.getpid(), child.pid)
        print(json.dumps({"status": "passed"}), flush=True)
        return 0
    elif mode == "sleep_tree":
        # A grandchild in the same process group: cancellation must kill it too.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        write_pids(data["pid_file"], os.getpid(), child.pid)
        time.sleep(60)
    elif mode == "stubborn":
        # Ignores SIGTERM: only SIGKILL ends it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write_pids(data["pid_file"], os.getpid())
        time.sleep(60)
    elif mode == "flood":
        # Megabytes on stdout and stderr: the executor must keep reading.
        block = "x" * 65536
        for _ in range(data.get("blocks", 64)):
            sys.stdout.write(block)
            sys.stderr.write(block)
        sys.stderr.write("\nlast words on stderr\n")
        sys.stdout.flush()
    elif mode == "flood_stderr":
        block = "e" * 65536
        for _ in range(data.get("blocks", 64)):
            sys.stderr.write(block)
        sys.stderr.write("\nlast words on stderr\n")
        print(json.dumps({"status": "passed"}))
    elif mode == "input_size":
        print(json.dumps({"output": {"bytes": len(raw.encode())}}))
    elif mode == "close_and_linger":
        # Done with its pipes, but it runs on and then fails: its exit code decides.
        print("null", flush=True)
        os.close(1)
        os.close(2)
        time.sleep(data.get("seconds", 0.5))
        return 5
    elif mode == "echo_input":
        print(json.dumps({"output": scenario}))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
