"""kit.cpus: the CPU limit read from cgroup files laid out as the kernel lays them out, and
the torch and FAISS pools sized from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import pytest
import torch

from ragmesh.kit import cpus


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def limit(tmp_path: Path, membership: str, files: dict[str, str]) -> float | None:
    (tmp_path / "self-cgroup").write_text(membership + "\n")
    return cpus.cpu_limit(tree(tmp_path / "cg", files), tmp_path / "self-cgroup")


V2 = {"cgroup.controllers": "cpuset cpu io memory pids"}


def test_v2_smallest_limit_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    files = {
        **V2,
        "kubepods/pod1/cpu.max": "150000 100000",  # the pod: limits.cpu 1500m
        "kubepods/pod1/ctr/cpu.max": "max 100000",
        "kubepods/cpu.max": "400000 100000",
    }
    assert limit(tmp_path, "0::/kubepods/pod1/ctr", files) == 1.5


def test_v2_container_namespace_reads_the_root_file(tmp_path: Path) -> None:
    assert limit(tmp_path, "0::/", {**V2, "cpu.max": "50000 100000"}) == 0.5


def test_v2_without_a_limit(tmp_path: Path) -> None:
    files = {**V2, "user.slice/cpu.max": "max 100000"}
    assert limit(tmp_path, "0::/user.slice/session-1.scope", files) is None


def test_v1_cfs_quota(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "250000", "cpu/cpu.cfs_period_us": "100000"}
    assert limit(tmp_path, "4:cpu,cpuacct:/docker/abc", files) == 2.5
    files["cpu/cpu.cfs_quota_us"] = "-1"
    assert limit(tmp_path, "4:cpu,cpuacct:/docker/abc", files) is None


def test_nothing_readable_means_no_limit(tmp_path: Path) -> None:
    assert cpus.cpu_limit(tmp_path / "missing", tmp_path / "missing-cgroup") is None


def test_available_is_the_affinity_capped_by_the_limit_rounded_down() -> None:
    mask = len(os.sched_getaffinity(0))
    assert cpus.available(limit=0.5) == 1
    assert cpus.available(limit=1.9) == 1
    assert cpus.available(limit=float(mask + 8)) == mask


@pytest.fixture
def restore_pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in cpus.POOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.mark.usefixtures("restore_pools")
def test_size_pools_sets_torch_faiss_and_the_variables() -> None:
    assert cpus.size_pools(3, "torch", "faiss") == 3
    assert torch.get_num_threads() == 3
    assert faiss.omp_get_max_threads() == 3
    assert {os.environ[name] for name in cpus.POOL_VARIABLES} == {"3"}


@pytest.mark.usefixtures("restore_pools")
def test_size_pools_zero_means_available() -> None:
    assert cpus.size_pools(0, "torch") == cpus.available()
    assert torch.get_num_threads() == cpus.available()
