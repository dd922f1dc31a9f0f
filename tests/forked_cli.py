"""`nbship` commands, each in a process of its own, without each paying for a fresh
interpreter's imports: `nbship build --task` spends ~13 s here importing Ploomber and its
libraries (~8 s with bytecode caches) before a task that runs in ~2 s.

`CliForks` starts this file as a script that imports the libraries named (and runs
nothing), then forks it once per command: each child sets its own working directory,
standard streams and arguments, runs `nbship.cli.main:main` as the `nbship` console
script does, and exits as an interpreter does (atexit handlers, non-daemon threads).
Nothing a command does reaches another: the parent never runs one, and each child runs
one and ends. A batch of commands runs at the same time; the answer comes when all ended.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

TIMEOUT = 900  # seconds per command, as `Project.run`


def read(path: str) -> str:
    return Path(path).read_text(errors="replace")


class CliForks:
    """The test side: `run` takes (folder, nbship arguments) pairs and gives each one's
    CompletedProcess, in order, once all ended. Close it (a `with` block) to stop the
    forking process."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...], scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self.scratch, self.count = scratch, 0
        self.log = scratch / "forks.err"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, *preload], env=env, cwd=scratch, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        self._answer()  # the libraries are imported

    def run(self, *commands: tuple[Path, list[str]]) -> list[subprocess.CompletedProcess[str]]:
        runs = []
        for cwd, args in commands:
            self.count += 1
            out, err = (self.scratch / f"{self.count}.{s}" for s in ("out", "err"))
            runs.append({"cwd": str(cwd), "args": args, "stdout": str(out), "stderr": str(err)})
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(runs) + "\n")
        self.proc.stdin.flush()
        codes = self._answer()
        return [
            subprocess.CompletedProcess(
                ["nbship", *r["args"]], code, read(r["stdout"]), read(r["stderr"])
            )
            for r, code in zip(runs, codes, strict=True)
        ]

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the forking process ended: {self.log.read_text()}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> CliForks:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _serve(answers: IO[str]) -> dict[str, Any] | None:
    """Forks a child per command of each batch read on stdin; returns in a child (the
    command it is to run), or None at the end of stdin."""
    for line in sys.stdin:
        sys.stdout.flush()  # nothing buffered before a fork is written twice
        sys.stderr.flush()
        children = []
        for run in json.loads(line):
            pid = os.fork()
            if pid == 0:
                return run
            children.append(pid)
        answers.write(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                                  for pid in children]) + "\n")  # fmt: skip
        answers.flush()
    return None


def _child(run: dict[str, Any], answers: IO[str]) -> None:
    answers.close()
    signal.alarm(TIMEOUT)  # not handled: the child ends
    os.chdir(run["cwd"])
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for fd, name in ((0, os.devnull), (1, run["stdout"]), (2, run["stderr"])):
        opened = os.open(name, os.O_RDONLY if fd == 0 else write, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator anew
        sys.modules["numpy"].random.seed()
    sys.argv = [str(Path(sys.executable).with_name("nbship")), *run["args"]]
    from nbship.cli.main import main

    sys.exit(main())


if __name__ == "__main__":
    # the import path of the `nbship` console script (its folder first), not this one's
    sys.path[0] = str(Path(sys.executable).parent)
    # answers on a copy of stdout; anything a library prints goes to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for module in sys.argv[1:]:
        importlib.import_module(module)
    # out of the children's collections: a child's exit would otherwise touch, and so
    # copy, every page of the parent's heap (2.7 s against 0.4 s)
    gc.collect()
    gc.freeze()
    answers.write("true\n")
    answers.flush()
    run = _serve(answers)
    if run is not None:
        _child(run, answers)
