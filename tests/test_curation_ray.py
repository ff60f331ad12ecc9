"""Curation on Ray (issue 12, section 3): `curate --engine ray` gives the same tables and clip files as the
default engine, resumes like it, and a task whose worker dies fails only its video.

One local Ray with 2 CPUs for the module (its start-up is most of the time here); the videos are the tiny
ones of `test_curation_robust.py` (64x48, 48 frames, two clips each).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
from test_curation_robust import snapshot, table, tiny_video

from minisvd.curation.curate import DIE_ON_ENV, WORKER_DIED, CurateConfig, curate_folder

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason='ray is not installed (pip install "minisvd[ray]")'
)
KILLED = "killed.mp4"  # a Ray worker given this video kills itself (test hook, set in the workers' env)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray as `--engine ray` starts one (2 CPUs, no dashboard); curate_folder uses it as it is."""
    import ray

    from minisvd.curation.engines import init_ray

    for attempt in range(
        2
    ):  # Ray gives a node 30 s to start (hard-coded): on a loaded machine, try again once
        try:
            init_ray(None, 2, runtime_env={"env_vars": {DIE_ON_ENV: KILLED}}, log_to_driver=False)
            break
        except Exception:  # noqa: BLE001 - EngineUnavailable after a slow start
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Names that collide by stem and across sub-folders, as in test_curation_robust.py."""
    d = tmp_path_factory.mktemp("src")
    for seed, rel in enumerate(["a.mp4", "a.mov", "sub/a.mp4", "sub__a.mp4", "b.mp4"]):
        tiny_video(d / rel, seed)
    return d


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The default engine (one process: the same bytes as more, test_curation_robust.py)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    rep = curate_folder(sources, out, CurateConfig(workers=1), progress=False)
    assert [v["status"] for v in rep.videos] == ["ok"] * 5
    return out


@pytest.fixture(scope="module")
def ray_out(local_ray, sources, tmp_path_factory):
    """`python -m minisvd curate SRC --out OUT --engine ray` (in this process, on the module's Ray)."""
    from minisvd.__main__ import main

    out = tmp_path_factory.mktemp("ray") / "out"
    assert main(["curate", str(sources), "--out", str(out), "--engine", "ray", "--workers", "2"]) == 0
    return out


@needs_ray
def test_ray_engine_gives_the_same_tables_and_clip_files_as_the_default(reference, ray_out):
    assert len(table(ray_out / "clips.csv")) == 10
    assert snapshot(ray_out) == snapshot(reference)  # both tables as text, every clip file's bytes


@needs_ray
def test_ray_engine_resumes_a_lost_clips_table_byte_identical(
    local_ray, sources, reference, ray_out, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(ray_out, out)
    (out / "clips.csv").unlink()
    (out / "clips" / "b.mp4_000030_000048.mp4").unlink()
    cfg = CurateConfig(engine="ray")
    rep = curate_folder(sources, out, cfg, progress=False)
    assert rep.computed["extract"] == 1 and rep.computed["cuts"] == 5  # only the deleted file is cut again
    assert snapshot(out) == snapshot(reference)
    assert sum(curate_folder(sources, out, cfg, progress=False).computed.values()) == 0  # complete: nothing
    assert snapshot(out) == snapshot(reference)


@needs_ray
def test_a_ray_task_whose_worker_dies_fails_only_its_video(local_ray, sources, reference, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy2(sources / name, src / name)  # same size and mtime: the same rows as the reference's
    shutil.copy2(sources / "b.mp4", src / KILLED)  # its worker is killed, twice (Ray retries it once)
    rep = curate_folder(src, out, CurateConfig(engine="ray"), progress=False)
    status = {v["video"]: (v["status"], v["reason"]) for v in rep.videos}
    assert status == {"a.mp4": ("ok", ""), "b.mp4": ("ok", ""), KILLED: ("error", WORKER_DIED)}
    for name in ("videos.csv", "clips.csv"):
        assert [r for r in table(out / name) if r["video"] != KILLED] == [
            r for r in table(reference / name) if r["video"] in ("a.mp4", "b.mp4")
        ]


def test_engine_ray_without_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from minisvd.__main__ import main

    tiny_video(tmp_path / "in" / "v.mp4", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["curate", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        'error: --engine ray needs the ray package, which is not installed: pip install "minisvd[ray]"'
    ]
    assert not (tmp_path / "out").exists()  # nothing written
    assert main(["curate", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == "error: --address is for --engine ray"


def test_tables_written_in_batches_still_hold_every_finished_video_after_ctrl_c(
    sources, reference, monkeypatch
):
    """Tables are rewritten at most every WRITE_GAP x the last rewrite's duration (a rewrite is O(rows)), and
    always at the end: an interrupted run keeps the rows of every video that finished."""
    import minisvd.curation.curate as curate

    out = reference.parent / "interrupted"
    real, calls = curate.process_video, []

    def interrupted_on_the_fourth(job):
        calls.append(job.rel)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(curate, "WRITE_GAP", 1e9)  # after the first video, no write is due until the end
    monkeypatch.setattr(curate, "process_video", interrupted_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        curate_folder(sources, out, CurateConfig(workers=1), progress=False)
    done = set(calls[:3])
    for name in ("videos.csv", "clips.csv"):
        assert table(out / name) == [r for r in table(reference / name) if r["video"] in done]
