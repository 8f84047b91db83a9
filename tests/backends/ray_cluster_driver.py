"""Drive a two-node local Ray cluster through a sweep and kill the worker node mid-sweep.

Run by test_ray_cluster.py inside a network namespace where only loopback is up:
``python ray_cluster_driver.py WORKDIR``. Writes ``WORKDIR/report.json``. Every process it
starts belongs to the Cluster object and is stopped through it (remove_node, shutdown).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

WORK = Path(sys.argv[1])
MARKERS = WORK / "markers"
SLEEP = 1.5  # seconds a unit waits after leaving its marker: time to kill its node mid-unit
CONFIG = {"archs": ["mlp:4-8-1"], "data": "linear:n=64,d=4", "lrs": [0.05, 0.1], "seeds": 3, "epochs": 2,
          "batch_size": 16}


def marked(unit: dict, device: str) -> list:
    """The sweep's unit, after leaving a marker (unit, node, pid) and sleeping; same records."""
    import ray

    from permsym.ensemble.sweep import sweep_unit

    node = ray.get_runtime_context().get_node_id()
    (MARKERS / f"{unit['lr']}-{unit['seeds'][0]}__{node}__{os.getpid()}").touch()
    time.sleep(SLEEP)
    return sweep_unit(unit, device)


def fails(x: int) -> int:
    raise ValueError(f"unit: x must be even; got {x}.")


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    import permsym.ensemble.sweep as sweep_module
    from permsym.backends.ray_backend import RayExecutor

    MARKERS.mkdir(parents=True)
    report: dict = {"started": time.time()}
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    fast = {"health_check_period_ms": 300, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": temp, "_system_config": fast})
    try:
        worker = cluster.add_node(num_cpus=1, temp_dir=temp)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        head_id = ray.get_runtime_context().get_node_id()
        report.update(address=cluster.address, head=head_id, worker=worker.node_id)

        done = threading.Event()

        def kill_worker_mid_unit() -> None:
            while not done.is_set():
                on_worker = [m.name for m in MARKERS.iterdir() if m.name.split("__")[1] == worker.node_id]
                if on_worker:
                    cluster.remove_node(worker, allow_graceful=False)  # kills that node's processes
                    report.update(killed_unit=on_worker[0].split("__")[0], killed_at=time.time())
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_worker_mid_unit)
        killer.start()
        sweep_module._call_unit = marked  # the units become slow and leave markers; records are unchanged
        try:
            sweep_module.run_sweep(CONFIG, WORK / "ray", backend="ray")
        finally:
            done.set()
            killer.join()
        report["markers"] = sorted(m.name for m in MARKERS.iterdir())
        try:  # a unit's own error comes back as itself, not retried
            with RayExecutor() as ex:
                ex.submit(fails, 3)
                list(ex.as_completed())
        except ValueError as exc:
            report["unit_error"] = str(exc)
    finally:
        report["finished"] = time.time()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        (WORK / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
