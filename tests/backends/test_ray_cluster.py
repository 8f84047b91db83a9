"""A real two-node Ray cluster: a sweep survives the death of its worker node, results equal local.

The cluster runs in a network namespace with only loopback up (``unshare --net``): Ray binds
the machine's external interface otherwise, and test traffic must stay on loopback. The
processes are the Cluster's own and are stopped through it; nothing is killed by name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("ray_cluster_driver.py")


def _netns_prefix() -> list[str]:
    """The command prefix that runs a command in a fresh network namespace, or skip with why not."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed: pip install 'permsym[ray]' (make test installs it)")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("network namespaces unavailable: needs util-linux 'unshare' and iproute2 'ip' on PATH")
    prefix = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        why = " ".join((probe.stderr or probe.stdout).split()) or f"exit code {probe.returncode}"
        pytest.skip(f"network namespaces unavailable ({' '.join(prefix)} failed: {why}); "
                    "the Ray cluster test needs one to keep its traffic on loopback")
    return prefix


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_survives_a_killed_worker_node_and_equals_local(tmp_path: Path) -> None:
    from permsym.ensemble.sweep import load_sweep_config, run_sweep, sweep_units

    sys.path.insert(0, str(DRIVER.parent))
    try:
        from ray_cluster_driver import CONFIG
    finally:
        sys.path.remove(str(DRIVER.parent))
    prefix = _netns_prefix()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    script = 'ip link set lo up && exec "$0" "$@"'
    log = tmp_path / "driver.log"
    start = time.monotonic()
    with log.open("w") as sink:
        proc = subprocess.run([*prefix, "sh", "-c", script, sys.executable, str(DRIVER), str(tmp_path)],
                              stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=170)
    wall = time.monotonic() - start
    tail = "\n".join(log.read_text().splitlines()[-40:])
    assert proc.returncode == 0, f"driver failed (exit {proc.returncode}) after {wall:.0f} s:\n{tail}"
    report = json.loads((tmp_path / "report.json").read_text())

    # the worker node died while running a unit, and that unit ran again on the head node
    killed = report.get("killed_unit")
    assert killed is not None, f"the worker node never started a unit: {report}"
    nodes = {m.split("__")[1] for m in report["markers"] if m.split("__")[0] == killed}
    assert nodes == {report["worker"], report["head"]}, report["markers"]
    assert report["unit_error"] == "unit: x must be even; got 3."

    # every unit exactly once, and the same bytes as the local backend
    config = load_sweep_config(CONFIG)
    expected = {p.name for p, *_ in sweep_units(config, tmp_path / "ray")}
    assert {p.name for p in (tmp_path / "ray" / "units").iterdir()} == expected
    ray_result = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    keys = [(r["arch"], r["lr"], r["seed"]) for r in ray_result["records"]]
    assert len(keys) == len(set(keys)) == len(config.archs) * len(config.lrs) * len(config.seed_list)
    run_sweep(config, tmp_path / "local")
    assert (tmp_path / "ray" / "sweep.json").read_bytes() == (tmp_path / "local" / "sweep.json").read_bytes()
    print(f"ray cluster test: driver {wall:.1f} s, unit {killed} retried after its node was killed")
