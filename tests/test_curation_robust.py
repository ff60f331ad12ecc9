"""Curation must not lose or mix up data (issue 12, section 1): clip names per source, a killed worker,
resume from what is complete on disk, retried failures, images and truncated files, a missing FOLDER.

Videos here are tiny (64x48, 48 frames at 12 fps, two scenes, a keyframe every 6 frames: two clips each),
so a whole curate run takes about a second; the runs with worker processes are the slow part.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from minisvd.curation.curate import DIE_ON_ENV, WORKER_DIED, CurateConfig, curate_folder
from minisvd.curation.video_io import iter_frames, probe, write_video

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tiny_video(path: Path, seed: int, n: int = 48, cut: int = 24, w: int = 64, h: int = 48) -> Path:
    """Two scenes of a coloured texture panning right, a hard cut at `cut`; H.264, keyframe every 6 frames."""
    rng = np.random.default_rng(seed)
    frames = []
    for a, b in ((0, cut), (cut, n)):
        tint = rng.integers(40, 216, 3)
        base = np.clip(tint + rng.normal(0, 40, (h // 4 + 8, w // 4 + 8, 3)), 0, 255).astype(np.uint8)
        base = np.repeat(np.repeat(base, 4, 0), 4, 1)
        frames += [base[:h, t : t + w] for t in range(b - a)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, np.stack(frames), fps=12, gop=6)
    return path


def faststart_copy(src: Path, dst: Path) -> None:
    """The same packets with the index (moov) first, as web videos are: a cut-off file still opens."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = i.streams.video[0]
        t = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is not None:
                p.stream = t
                o.mux(p)


def table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(out: Path) -> tuple[str, str, dict[str, bytes]]:
    """Both tables as text and every clip file's bytes."""
    clips = {p.name: p.read_bytes() for p in sorted((out / "clips").glob("*.mp4"))}
    return (out / "videos.csv").read_text(), (out / "clips.csv").read_text(), clips


def first_frame(path: Path, index: int = 0) -> np.ndarray:
    return next(fr for i, fr in iter_frames(path) if i == index)


def cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 150):
    """`python -m minisvd ARGS` in a fresh process, killed (test fails) if it hangs."""
    return subprocess.run(
        [sys.executable, "-m", "minisvd", *args], capture_output=True, text=True, env=env or ENV, cwd=cwd,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Good videos whose names collide by stem (a.mp4, a.mov) and across sub-folders (sub/a.mp4, sub__a.mp4)."""
    d = tmp_path_factory.mktemp("good")
    for seed, rel in enumerate(["a.mp4", "a.mov", "sub/a.mp4", "sub__a.mp4", "b.mp4"]):
        tiny_video(d / rel, seed)
    return d


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory) -> Path:
    """An undisturbed run (one process)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    rep = curate_folder(sources, out, CurateConfig(workers=1), progress=False)
    assert all(v["status"] == "ok" for v in rep.videos) and len(rep.videos) == 5
    return out


def test_clip_names_are_unique_per_source_and_clips_hold_their_sources_frames(sources, reference):
    """Issue 12.1: clips were named by stem, so a.mov's rows pointed at a.mp4's clips (and sub-folders were ignored)."""
    rows = table(reference / "clips.csv")
    assert {r["video"] for r in rows} == {"a.mp4", "a.mov", "sub/a.mp4", "sub__a.mp4", "b.mp4"}
    assert len({r["file"] for r in rows}) == len(rows) == 10  # two clips per video, ten files
    assert any(
        r["file"].startswith("clips/sub__a.mp4-") for r in rows
    )  # a name shared by two sources: hashed
    assert any(r["file"] == "clips/a.mov_000000_000018.mp4" for r in rows)
    for r in rows:  # each clip file is a packet copy of its own source
        assert np.array_equal(
            first_frame(reference / r["file"]), first_frame(sources / r["video"], int(r["start"]))
        )
        assert probe(reference / r["file"]).n_frames == int(r["n_frames"])


def test_two_workers_give_the_same_bytes_as_one(sources, reference, tmp_path):
    rep = curate_folder(sources, tmp_path / "out", CurateConfig(workers=2), progress=False)
    assert all(v["status"] == "ok" for v in rep.videos)
    assert snapshot(tmp_path / "out") == snapshot(reference)


def _truncate_videos_mid_row(out: Path) -> None:
    p = out / "videos.csv"
    p.write_bytes(p.read_bytes()[:-7])  # the last row loses its line end and the end of n_clips


def _drop_clip_rows_of(video: str):
    def disturb(out: Path) -> None:  # a kill between writing the videos table and the clips table
        rows = [r for r in table(out / "clips.csv") if r["video"] != video]
        with open(out / "clips.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    return disturb


DISTURBANCES = {
    "clips table deleted": lambda out: (out / "clips.csv").unlink(),
    "clip rows of one video lost": _drop_clip_rows_of("a.mov"),
    "one clip file deleted": lambda out: (out / "clips" / "b.mp4_000030_000048.mp4").unlink(),
    "one clip file cut short": lambda out: (out / "clips" / "a.mp4_000000_000018.mp4").write_bytes(
        (out / "clips" / "a.mp4_000000_000018.mp4").read_bytes()[:3000]
    ),
    "videos table truncated to one row": lambda out: (out / "videos.csv").write_text(
        "".join((out / "videos.csv").read_text().splitlines(keepends=True)[:2])
    ),
    "videos table cut mid-row": _truncate_videos_mid_row,
    "clips table cut mid-row": lambda out: (out / "clips.csv").write_bytes(
        (out / "clips.csv").read_bytes()[:-40]
    ),
}


@pytest.mark.parametrize("what", list(DISTURBANCES))
def test_resume_rebuilds_what_is_lost_byte_identical(what, sources, reference, tmp_path):
    """Issue 12.3: a resume trusted the tables (a deleted clips table gave '0 clips, computed nothing')."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    DISTURBANCES[what](out)
    rep = curate_folder(sources, out, CurateConfig(workers=1), progress=False)
    assert sum(rep.computed.values()) > 0
    assert snapshot(out) == snapshot(reference)
    assert sum(curate_folder(sources, out, CurateConfig(workers=1), progress=False).computed.values()) == 0


def test_a_killed_worker_fails_its_video_and_the_run_ends(tmp_path):
    """Issue 12.2: a worker killed by SIGKILL (the OOM killer) hung the run at 15/16 for ever."""
    src = tmp_path / "in"
    for i in range(4):
        tiny_video(src / f"v{i}.mp4", i)
    run = cli(
        ["curate", str(src), "--out", str(tmp_path / "out"), "--workers", "2"], {**ENV, DIE_ON_ENV: "v1.mp4"}
    )
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("1 of 4 videos failed")
    videos = {v["video"]: v for v in table(tmp_path / "out" / "videos.csv")}
    assert videos["v1.mp4"]["status"] == "error" and videos["v1.mp4"]["reason"] == WORKER_DIED
    rows = table(tmp_path / "out" / "clips.csv")
    assert {r["video"] for r in rows} == {"v0.mp4", "v2.mp4", "v3.mp4"} and len(rows) == 6
    assert all(probe(tmp_path / "out" / r["file"]).n_frames == int(r["n_frames"]) for r in rows)


def _fail_once_then_fix(path: Path, good: bytes) -> None:
    """Fix a file that failed, keeping its size and mtime (what a rerun compares)."""
    st = path.stat()
    path.write_bytes(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_failed_videos_are_retried_unless_no_retry_failed(tmp_path, capsys):
    """Issue 12.4: a file that failed once was skipped on every rerun until its size or mtime changed."""
    from minisvd.__main__ import main

    src, out = tmp_path / "in", tmp_path / "out"
    good = tiny_video(src / "v.mp4", 0).read_bytes()
    (src / "v.mp4").write_bytes(b"\0" * len(good))  # broken on the first run (e.g. still being copied)
    args = ["curate", str(src), "--out", str(out), "--workers", "1"]
    assert main(args) == 3
    _fail_once_then_fix(src / "v.mp4", good)
    assert main([*args, "--no-retry-failed"]) == 3  # unchanged size and mtime: not tried
    assert table(out / "videos.csv")[0]["status"] == "error"
    assert main(args) == 0  # retried by default
    assert table(out / "videos.csv")[0]["status"] == "ok" and len(table(out / "clips.csv")) == 2
    capsys.readouterr()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_an_unreadable_video_is_retried_once_readable(tmp_path):
    src = tmp_path / "in"
    tiny_video(src / "v.mp4", 0).chmod(0)
    rep = curate_folder(src, tmp_path / "out", CurateConfig(workers=1), progress=False)
    assert rep.videos[0]["status"] == "error"
    (src / "v.mp4").chmod(0o644)
    rep = curate_folder(src, tmp_path / "out", CurateConfig(workers=1), progress=False)
    assert rep.videos[0]["status"] == "ok" and len(rep.clips) == 2


def test_an_image_named_mp4_is_not_a_video(tmp_path):
    """Issue 12.6: a PNG renamed .mp4 was taken as a 1-frame video."""
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(tmp_path / "x.png"), np.full((48, 64, 3), 128, np.uint8))
    shutil.copy(tmp_path / "x.png", src / "photo.mp4")
    rep = curate_folder(src, tmp_path / "out", CurateConfig(workers=1), progress=False)
    assert rep.videos[0]["status"] == "error" and "not a video (PNG image?)" in rep.videos[0]["reason"]


def test_a_truncated_video_keeps_the_frames_that_decode(tmp_path, capsys):
    """Issue 12.6: an MP4 cut off after its first frames was rejected whole."""
    from minisvd.__main__ import main

    src = tmp_path / "in"
    faststart_copy(tiny_video(tmp_path / "whole.mp4", 0), tmp_path / "fs.mp4")
    data = (tmp_path / "fs.mp4").read_bytes()
    src.mkdir()
    (src / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    assert main(["curate", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "warning cut.mp4: truncated" in capsys.readouterr().out
    v = table(tmp_path / "out" / "videos.csv")[0]
    assert v["status"] == "ok" and v["warning"].startswith("truncated: decoding stopped after")
    assert 18 <= int(v["n_frames"]) < 48
    rows = table(tmp_path / "out" / "clips.csv")
    assert (
        len(rows) == 1 and rows[0]["start"] == "0" and int(rows[0]["end"]) <= int(v["n_frames"])
    )  # 2nd scene cut off
    last = int(rows[0]["end"]) - 1
    assert np.array_equal(
        first_frame(tmp_path / "out" / rows[0]["file"], last), first_frame(tmp_path / "whole.mp4", last)
    )


def test_readme_curate_command_elsewhere_is_one_line_naming_the_folder(tmp_path, monkeypatch, capsys):
    """Issue 12.7: `python -m minisvd curate data_samples ...` outside the repository (or from a wheel) ended
    in a raw FileNotFoundError."""
    from minisvd.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["curate", "data_samples", "--out", "out/curated"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: no such folder: data_samples ({tmp_path / 'data_samples'})"
    )
    assert "git repository" in err[0] and "write_raw_set('toy_videos')" in err[0]
    assert not (tmp_path / "out").exists()  # nothing written
    (tmp_path / "file.mp4").write_bytes(b"")
    assert main(["curate", "file.mp4", "--out", "out"]) == 2
    assert capsys.readouterr().err.startswith("error: not a folder: file.mp4")


def test_broken_colliding_and_killed_inputs_end_byte_identical_to_an_undisturbed_run(
    sources, reference, tmp_path
):
    """The whole of issue 12.1: the good videos' clips and rows after a disturbed run and a rerun equal those of
    an undisturbed run, byte for byte."""
    src, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(sources, src)  # copy2: same size and mtime, so the same rows
    shutil.copy2(sources / "b.mp4", src / "killed.mp4")  # its worker is killed on the first run
    (src / "empty.mp4").write_bytes(b"")
    import cv2

    cv2.imwrite(str(src / "sub" / "image.png"), np.zeros((8, 8, 3), np.uint8))
    os.replace(src / "sub" / "image.png", src / "sub" / "image.mov")  # a PNG named .mov
    run = cli(["curate", str(src), "--out", str(out), "--workers", "2"], {**ENV, DIE_ON_ENV: "killed.mp4"})
    assert run.returncode == 3 and "3 of 8 videos failed" in run.stderr, run.stderr
    (out / "clips" / "a.mov_000030_000048.mp4").unlink()  # and the output is disturbed as well
    _drop_clip_rows_of("sub/a.mp4")(out)
    rep = curate_folder(src, out, CurateConfig(workers=1), progress=False)  # the rerun
    status = {v["video"]: (v["status"], v["reason"]) for v in rep.videos}
    assert status["killed.mp4"] == ("ok", "")  # retried
    assert status["empty.mp4"] == ("error", "ValueError: zero-length file")
    assert status["sub/image.mov"] == ("error", "ValueError: not a video (PNG image?)")
    good = {r["video"] for r in table(reference / "videos.csv")}
    for name in ("videos.csv", "clips.csv"):
        assert [r for r in table(out / name) if r["video"] in good] == table(reference / name)
    ref_clips, got_clips = snapshot(reference)[2], snapshot(out)[2]
    assert {k: v for k, v in got_clips.items() if k in ref_clips} == ref_clips
    assert len(got_clips) == len(ref_clips) + 2  # and killed.mp4's two clips
