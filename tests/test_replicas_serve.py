"""`fabric serve --workers 2`: a real node process whose home is a ReplicaGroup."""

import os
import signal

import pytest

from fabric.node import connect

import replicas_ops
from served import popen, serve_cmd, served


def test_serve_workers_computes_in_two_worker_processes(tmp_path):
    with served(tmp_path, "w", "--workers", "2", ops="replicas_ops") as (proc, url):
        with connect(url) as node:
            pids = [node.evaluate(replicas_ops.pid.request(i)).value for i in range(4)]
            # Held by the node: not computed again (the next replica in
            # turn, the other one, would answer with its own pid).
            again = node.evaluate(replicas_ops.pid.request(1))
        assert proc.pid not in pids
        assert len(set(pids)) == 2  # round-robin over the two replicas
        assert again.value == pids[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for p in set(pids):  # the replicas ended with the node
            with pytest.raises(ProcessLookupError):
                os.kill(p, 0)
    proc.stdout.close()
    proc.stderr.close()


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--home", "replicas_ops:pid"], "two homes"),
    (["--workers", "1", "--group-seed", "abc"], "64 hex digits"),
])
def test_serve_workers_bad_arguments(tmp_path, args, message):
    proc = popen(serve_cmd(tmp_path, "w", *args, ops="replicas_ops"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "listening on" not in out
    assert message in err
