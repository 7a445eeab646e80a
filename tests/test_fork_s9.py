"""A process forked while another thread reads the accel config (accel.config.get's lock held)
must read its own config in the child, not wait for ever on a lock no thread of it holds."""
import subprocess
import sys

_FORK_WHILE_READING = r"""
import os, threading, time
import accel.config as config
config.reload()
held, go = threading.Event(), threading.Event()
def reader():
    with config._lock:  # another thread in the middle of get() or reload()
        held.set()
        go.wait()
t = threading.Thread(target=reader)
t.start()
held.wait()
pid = os.fork()
if pid == 0:
    config._current = None
    os._exit(0 if config.get().backend else 3)
go.set()
t.join()
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_while_the_config_was_being_read_reads_its_own():
    done = subprocess.run([sys.executable, "-c", _FORK_WHILE_READING], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "child 0" in done.stdout, (done.stdout, done.stderr[-2000:])
