"""Where each limit is enforced (`effectd.runner.controllers`), against fake cgroupfs trees in a tmp dir: a
pure cgroup v2 host that delegates memory, pids and cpu (the server moves itself into a leaf and enables
them), one whose cgroup also holds other processes or lacks a controller, and a hybrid v1 host."""

from __future__ import annotations

from pathlib import Path

import pytest

from effectd.runner.base import Usage
from effectd.runner.controllers import Controllers, LimitError, cpu_quota, read_usage
from effectd.runner.ray_runner import RayRunner

SERVER = 4242
OWN = "/user.slice/user-1000.slice/user@1000.service/app.slice/effectd.service"


def v2_host(tmp_path: Path, *, controllers: str = "cpu io memory pids", procs: str = f"{SERVER}\n") -> Path:
    """A cgroup2 mount at tmp/cg2 with the server alone in OWN, which delegates `controllers`; returns the
    containment's `effectd/` folder (what `Cgroups.find` makes)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    mount = tmp_path / "cg2"
    (proc / "mountinfo").write_text(f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n")
    (proc / "cgroup").write_text(f"0::{OWN}\n")
    own = mount / OWN.lstrip("/")
    (own / "effectd").mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(procs)
    (own / "cgroup.type").write_text("domain\n")
    (own / "effectd" / "cgroup.subtree_control").write_text("")
    return own / "effectd"


def test_on_a_v2_host_the_server_moves_into_its_leaf_and_enables_the_controllers_for_the_effects(
    tmp_path: Path,
) -> None:
    root = v2_host(tmp_path)
    found = Controllers.find(root, proc=tmp_path / "proc", pid=SERVER)
    own = root.parent
    assert (own / "effectd-server" / "cgroup.procs").read_text() == str(SERVER)
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert {limit: (p.version, p.root) for limit, p in found.places.items()} == {
        "memory_mb": (2, root),
        "pids": (2, root),
        "cpu": (2, root),
    }
    assert found.refusal(["memory_mb", "pids", "cpu"]) is None

    effect = root / "eff_1"
    effect.mkdir()  # made by containment
    limited = found.make("eff_1", {"memory_mb": 64, "pids": 40, "cpu": 0.5}, effect)
    assert limited.v1 == [] and limited.needs_v2 and limited.usage_from == effect
    assert (effect / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (effect / "pids.max").read_text() == "40"
    assert (effect / "cpu.max").read_text() == "50000 100000"


def test_looking_only_changes_nothing_and_says_the_server_enables_them_at_start(tmp_path: Path) -> None:
    root = v2_host(tmp_path)
    found = Controllers.find(root, proc=tmp_path / "proc", pid=SERVER, prepare=False)
    assert not (root.parent / "effectd-server").exists()
    assert (root / "cgroup.subtree_control").read_text() == ""
    assert "enabled for the effects when the server starts" in found.places["memory_mb"].describe()


def test_a_cgroup_that_holds_other_processes_cannot_delegate_and_the_limit_says_why(tmp_path: Path) -> None:
    root = v2_host(tmp_path, procs=f"{SERVER}\n777\n")
    found = Controllers.find(root, proc=tmp_path / "proc", pid=SERVER)
    assert found.places == {}
    why = found.refusal(["memory_mb"])
    assert why is not None and "`memory_mb`" in why and "the memory controller is missing" in why
    assert "also holds other processes (777)" in why and "effectd doctor" in why
    assert (root / "cgroup.subtree_control").read_text() == ""  # nothing enabled half-way


def test_a_controller_the_cgroup_does_not_delegate_is_missing_and_named(tmp_path: Path) -> None:
    root = v2_host(tmp_path, controllers="cpu memory")
    found = Controllers.find(root, proc=tmp_path / "proc", pid=SERVER)
    assert set(found.places) == {"memory_mb", "cpu"}
    why = found.refusal(["memory_mb", "pids"])
    assert why is not None and "`pids`" in why and "the pids controller is missing" in why
    assert "does not delegate it" in why and "`memory_mb`:" not in why
    with pytest.raises(LimitError, match="pids controller is missing"):
        found.make("eff_2", {"pids": 4}, root / "eff_2")


def test_without_v2_containment_and_without_v1_hierarchies_no_limit_can_be_enforced(tmp_path: Path) -> None:
    v2_host(tmp_path)
    found = Controllers.find(None, proc=tmp_path / "proc", pid=SERVER)
    assert found.places == {}
    assert "no memory hierarchy mounted" in (found.refusal(["memory_mb"]) or "")


def v1_host(tmp_path: Path) -> dict[str, Path]:
    """A hybrid host: v1 memory, pids and cpu,cpuacct hierarchies, the server in a memory cgroup of its own."""
    proc = tmp_path / "proc"
    proc.mkdir()
    v1 = tmp_path / "v1"
    lines = [f"41 31 0:38 / {tmp_path / 'unified'} rw,relatime - cgroup2 cgroup2 rw"]
    for number, name in enumerate(("memory", "pids", "cpu,cpuacct")):
        lines.append(f"3{number} 31 0:3{number} / {v1 / name} rw,relatime - cgroup cgroup rw,{name}")
    (proc / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "cgroup").write_text("9:name=systemd:/\n4:memory:/process_api/a0\n8:pids:/\n1:cpu,cpuacct:/\n0::/\n")
    bases = {"memory": v1 / "memory/process_api/a0", "pids": v1 / "pids", "cpu": v1 / "cpu,cpuacct"}
    for base in bases.values():
        base.mkdir(parents=True)
        (base / "cgroup.procs").write_text("")
    return bases


def test_on_a_hybrid_host_each_limit_gets_a_cgroup_in_its_v1_hierarchy_with_the_limit_written(
    tmp_path: Path,
) -> None:
    bases = v1_host(tmp_path)
    found = Controllers.find(None, proc=tmp_path / "proc", pid=SERVER)
    assert {limit: (p.version, p.root) for limit, p in found.places.items()} == {
        "memory_mb": (1, bases["memory"] / "effectd"),
        "pids": (1, bases["pids"] / "effectd"),
        "cpu": (1, bases["cpu"] / "effectd"),
    }
    limited = found.make("eff_3", {"memory_mb": 32, "pids": 40, "cpu": 0.005}, None)
    memory, pids, cpu = (bases[name] / "effectd" / "eff_3" for name in ("memory", "pids", "cpu"))
    assert limited.v1 == [memory, pids, cpu] and not limited.needs_v2 and limited.usage_from == memory
    assert (memory / "memory.limit_in_bytes").read_text() == str(32 * 1024 * 1024)
    assert (pids / "pids.max").read_text() == "40"
    assert ((cpu / "cpu.cfs_quota_us").read_text(), (cpu / "cpu.cfs_period_us").read_text()) == ("5000", "1000000")
    limited.enter(SERVER + 1)
    assert (pids / "cgroup.procs").read_text() == str(SERVER + 1)


@pytest.mark.parametrize(
    ("files", "usage"),
    [
        (
            {"memory.peak": "34603008\n", "memory.events": "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n"},
            Usage(33.0, True),
        ),
        ({"memory.peak": "1048576\n", "memory.events": "low 0\nmax 0\noom 0\noom_kill 0\n"}, Usage(1.0, False)),
        (
            {"memory.max_usage_in_bytes": "33554432", "memory.oom_control": "oom_kill_disable 0\noom_kill 2\n"},
            Usage(32.0, True),
        ),
        (  # the limit was hit (failcnt) but reclaim sufficed: no kill
            {"memory.failcnt": "98", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
            Usage(None, False),
        ),
        ({"memory.failcnt": "3", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"}, Usage(None, True)),
        ({}, Usage()),
    ],
    ids=["v2-killed", "v2-fine", "v1-killed", "v1-reclaimed", "v1-before-4.13", "nothing"],
)
def test_the_memory_verdict_is_read_from_the_cgroups_counters(
    tmp_path: Path, files: dict[str, str], usage: Usage
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert read_usage(tmp_path) == usage


def test_cpu_quotas_below_a_hundredth_of_a_core_use_the_longest_period() -> None:
    assert cpu_quota(0.5) == (50_000, 100_000)
    assert cpu_quota(2) == (200_000, 100_000)
    assert cpu_quota(0.001) == (1_000, 1_000_000)


def test_the_ray_runner_refuses_limits_and_says_to_run_them_locally() -> None:
    ray = object.__new__(RayRunner)  # no cluster needed to answer
    assert ray.refuse_limits({}) is None
    why = ray.refuse_limits({"memory_mb": 64})
    assert why is not None and "Ray runner" in why and "--runner local" in why
