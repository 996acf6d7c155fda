"""The fork server: imports the heavy modules of a run once, then forks every child of the run from itself.

A child forked from here starts in milliseconds (torch, transformers and the roles are already imported) and
shares those pages with its siblings. `ProcessGroup` (processes.py) starts it as

    python -m testbed.launch.fork_server FD MODULE...

in a session of its own, so that it and every process it forks form one process group: the launcher stops
them all with one signal to the group, and no terminal signal (Ctrl-C, hang-up) reaches them behind its back.

FD is the server's end of a socket pair; the other end stays with the launcher. Messages, one pickled tuple a
frame (`send`, `receive`):
    launcher -> server   (name, target, args)        fork a child that runs target(*args); target: a function,
                                                     or "module:function" (a launcher that must not import it)
    server -> launcher   ("started", name, pid)      the reply, at once
                         ("exited", pid, exit_code)  when a child ends (-N: killed by signal N)
When the launcher's end closes (it exited or crashed without stopping the group), the server kills the group.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import traceback

_LENGTH = struct.Struct("!I")  # frame header: the pickle's length in bytes


def send(channel: socket.socket, message: tuple) -> None:
    data = pickle.dumps(message)
    channel.sendall(_LENGTH.pack(len(data)) + data)


def receive(channel: socket.socket) -> tuple | None:
    """The next message (blocks until it is whole); None once the other end has closed."""
    header = _exactly(channel, _LENGTH.size)
    if header is None:
        return None
    data = _exactly(channel, _LENGTH.unpack(header)[0])
    return None if data is None else pickle.loads(data)  # only the launcher holds the other end


def _exactly(channel: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = channel.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(channel: socket.socket) -> None:
    """Fork a child per request and report each child's end, until the launcher's end closes."""
    wake_read, wake_write = os.pipe()  # a SIGCHLD writes a byte here and so wakes select()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    watched: list[socket.socket | int] = [channel, wake_read]  # a socket and an fd: select() needs the type
    try:
        while True:
            readable, _, _ = select.select(watched, [], [])
            if wake_read in readable:
                os.read(wake_read, 4096)
                _report_ended(channel)
            if channel in readable:
                request = receive(channel)
                if request is None:
                    return
                name, target, args = request
                pid = os.fork()
                if pid == 0:
                    _run_child(channel, (wake_read, wake_write), target, args)
                send(channel, ("started", name, pid))
    finally:  # the launcher is gone (or this loop failed): so are the group's processes, this one included
        os.killpg(0, signal.SIGKILL)


def _report_ended(channel: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send(channel, ("exited", pid, os.waitstatus_to_exitcode(status)))


def _run_child(channel: socket.socket, wake: tuple[int, int], target, args) -> None:
    """In the forked child: run target(*args) and exit with its code (as multiprocessing's children do); never
    returns into the server's loop."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # A SIGTERM sent since the fork waited, pending: it ends the child here, as one sent later will.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        for fd in wake:
            os.close(fd)
        channel.close()  # the launcher's messages are the server's alone
        if isinstance(target, str):
            module, _, function = target.partition(":")
            target = getattr(importlib.import_module(module), function)
        target(*args)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def main(argv: list[str]) -> None:
    channel = socket.socket(fileno=int(argv[0]))
    # A process inherits ignored signals from whoever started it (a launcher that was finishing ignores
    # SIGTERM and SIGINT): the children must end on them as processes do by default.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    # The group's SIGTERM is for the children; the server stays to report how they ended, and goes with the
    # group's SIGKILL (or when the launcher's end closes). Blocked, not ignored: a child forked from here
    # inherits the block and lifts it, so that a SIGTERM that reaches it before it does is not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    for module in argv[1:]:
        importlib.import_module(module)
    serve(channel)


if __name__ == "__main__":
    main(sys.argv[1:])
