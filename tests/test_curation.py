"""Curation: data samples, cut cascade vs ground truth (and vs PySceneDetect), motion, text, pipeline.

Nothing here is timed: the speed of the cut cascade against PySceneDetect is measured and checked by
`benchmarks/bench_curation.py` (`--min-speedup`), where load from other processes cannot fail the suite.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from minisvd.curation.curate import CurateConfig, curate_folder
from minisvd.curation.cuts import detect_cuts, scenes, snap_to_keyframes
from minisvd.curation.evaluate import PRF, match_transitions, spearman
from minisvd.curation.filtering import PAPER_FILTERS, STANDIN_FILTERS, apply_filters, column, score_choice
from minisvd.curation.motion import flow_size, motion_score, sample_indices
from minisvd.curation.text import text_score
from minisvd.curation.video_io import decode_small_yuv, iter_frames, probe, read_frames

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data_samples"
MANIFEST = json.loads((DATA / "manifest.json").read_text())


def test_data_samples_small_real_h264_with_keyframes():
    total = sum(p.stat().st_size for p in DATA.iterdir())
    assert total <= 15e6
    for v in MANIFEST["videos"]:
        info = probe(DATA / v["file"])
        assert info.n_frames == v["n_frames"] and (info.width, info.height) == (320, 180)
        assert info.keyframes == list(range(0, v["n_frames"], MANIFEST["gop"]))


def test_build_script_rebuilds_same_manifest_and_frames(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build_data_samples", ROOT / "scripts" / "build_data_samples.py"
    )
    build = importlib.util.module_from_spec(spec)
    sys.modules["build_data_samples"] = build  # dataclasses look their module up here
    spec.loader.exec_module(build)
    m = build.build(tmp_path, only=["static_mix"])
    new = next(v for v in m["videos"] if v["file"] == "static_mix.mp4")
    old = next(v for v in MANIFEST["videos"] if v["file"] == "static_mix.mp4")
    assert {k: v for k, v in new.items() if k != "sha256"} == {k: v for k, v in old.items() if k != "sha256"}
    a, _ = decode_small_yuv(tmp_path / "static_mix.mp4")
    b, _ = decode_small_yuv(DATA / "static_mix.mp4")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


@pytest.fixture(scope="module")
def cut_results():
    return {v["file"]: detect_cuts(DATA / v["file"]) for v in MANIFEST["videos"]}


def test_cut_cascade_accuracy(cut_results):
    tot = {"cut": PRF(0, 0, 0), "gradual": PRF(0, 0, 0)}
    for v in MANIFEST["videos"]:
        res = match_transitions([t.frame for t in cut_results[v["file"]].transitions], v["transitions"])
        tot = {k: tot[k] + res[k] for k in tot}
    assert tot["cut"].f1 >= 0.9, tot
    assert tot["gradual"].f1 >= 0.8, tot


def test_cascade_beats_pyscenedetect_content(cut_results):
    sd = pytest.importorskip("scenedetect")
    tot = {"ours": PRF(0, 0, 0), "content": PRF(0, 0, 0)}
    for v in MANIFEST["videos"][:4]:
        sm = sd.SceneManager()
        sm.add_detector(sd.ContentDetector())
        sm.detect_scenes(sd.open_video(str(DATA / v["file"]), backend="pyav"))
        theirs = [s[0].frame_num for s in sm.get_scene_list()[1:]]
        mine = [t.frame for t in cut_results[v["file"]].transitions]
        for name, found in (("ours", mine), ("content", theirs)):
            r = match_transitions(found, v["transitions"])
            tot[name] = tot[name] + r["cut"] + r["gradual"]
    assert tot["ours"].f1 >= tot["content"].f1


def test_flash_is_not_a_cut(cut_results):
    for v in MANIFEST["videos"]:
        found = [t.frame for t in cut_results[v["file"]].transitions]
        for f in v["flashes"]:
            assert not any(abs(d - f["frame"]) <= 2 for d in found), (v["file"], f)


def test_clips_snap_to_keyframes_inside_scenes(cut_results):
    v = MANIFEST["videos"][0]
    res, info = cut_results[v["file"]], probe(DATA / v["file"])
    clips = snap_to_keyframes(scenes(res.transitions, res.n_frames), info.keyframes, res.n_frames)
    assert clips
    for s, e in clips:
        assert s in info.keyframes and (e in info.keyframes or e == res.n_frames)
        assert not any(s <= t.frame < e and t.frame != s for t in res.transitions)  # no transition inside


def test_motion_score_ranks_true_speed():
    w, h = MANIFEST["width"], MANIFEST["height"]
    ours, true = [], []
    for v in MANIFEST["videos"][:4]:
        grey = dict(iter_frames(DATA / v["file"], size=flow_size(w, h, 90), fmt="gray"))
        for s in v["shots"]:
            idx = sample_indices(s["start"], s["end"] + 1, MANIFEST["fps"])
            ours.append(motion_score({i: grey[i] for i in idx}, min(w, h)).score)
            true.append(s["speed_px_per_frame"])
    assert spearman(ours, true) >= 0.9


def test_text_score_tracks_true_text_area():
    v = next(v for v in MANIFEST["videos"] if v["file"] == "titles.mp4")
    idx = [s["start"] + 5 for s in v["shots"]]
    frames = read_frames(DATA / v["file"], idx)
    ours = np.array(text_score([frames[i] for i in idx]).per_frame)
    true = np.array([v["text_area"][i] for i in idx])
    assert np.abs(ours - true).mean() < 0.03
    assert (ours[true == 0] < 0.01).all() and (ours[true > 0] > 0.01).all()


def test_pipeline_resumes_and_survives_bad_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "titles.mp4").write_bytes((DATA / "titles.mp4").read_bytes())
    (src / "truncated.mp4").write_bytes((DATA / "pans.mp4").read_bytes()[:40000])
    (src / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    rep = curate_folder(src, out, CurateConfig(workers=2), progress=False)
    status = {v["video"]: v for v in rep.videos}
    assert status["titles.mp4"]["status"] == "ok"
    assert status["empty.mp4"]["status"] == "error" and "zero-length" in status["empty.mp4"]["reason"]
    assert status["truncated.mp4"]["status"] == "error" and status["truncated.mp4"]["reason"]
    assert len(rep.clips) >= 3 and rep.computed["motion"] == len(rep.clips)
    rows = list(csv.DictReader(open(out / "clips.csv")))
    assert all(
        r["motion"] and r["text_area"] and r["caption_summary"] and r["standin_aesthetic"] for r in rows
    )
    assert all((out / r["file"]).exists() for r in rows)
    # Second run: nothing to do. Then lose one column of one clip: only that is recomputed.
    assert sum(curate_folder(src, out, CurateConfig(workers=2), progress=False).computed.values()) == 0
    rows[0]["text_area"] = ""
    with open(out / "clips.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = curate_folder(src, out, CurateConfig(workers=1), progress=False)
    assert dict(again.computed) == {"text": 1}
    keep, funnel = apply_filters(again.clips, STANDIN_FILTERS)
    assert funnel[0].clips == len(again.clips) and funnel[-1].clips == keep.sum() < len(again.clips)


def test_score_choice_and_numeric_columns():
    assert score_choice(None) == (["standin_aesthetic", "standin_consistency"], STANDIN_FILTERS)
    assert score_choice("a/clip/folder") == (["clip_score"], PAPER_FILTERS)
    got = column([{"m": "1.5"}, {"m": ""}, {"m": None}, {}, {"m": "x"}], "m")
    assert got[0] == 1.5 and np.isnan(got[1:]).all()


def test_cli_curate_prints_funnel(tmp_path, capsys):
    from minisvd.__main__ import main

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.mp4").write_bytes((DATA / "subtitles.mp4").read_bytes())
    assert main(["curate", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "mean clip (s)" in capsys.readouterr().out


def test_cli_curate_exits_3_and_counts_when_some_videos_failed(tmp_path, capsys):
    """Issue 12.6: curate exited 0 when videos failed."""
    from minisvd.__main__ import main

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.mp4").write_bytes((DATA / "subtitles.mp4").read_bytes())
    (src / "broken.mp4").write_bytes(b"not a video at all" * 100)
    assert main(["curate", str(src), "--out", str(tmp_path / "out"), "--workers", "1"]) == 3
    out, err = capsys.readouterr()
    assert "skipped broken.mp4" in out and "mean clip (s)" in out
    assert err.strip().splitlines()[-1].startswith("1 of 2 videos failed")
    rows = (tmp_path / "out" / "clips.csv").read_text()
    assert "a.mp4" in rows and "broken.mp4" not in rows  # the good video's clips are kept


def test_a_given_clip_dir_that_is_not_usable_is_an_error_before_anything_runs(tmp_path):
    """Issue 12.5: a wrong --clip-dir fell back to the stand-in scorer in silence (exit 0, CLIP filters gone)."""
    import subprocess
    import sys

    from minisvd.curation.clip_scores import make_scorer
    from minisvd.curation.curate import CurateConfig, curate_folder

    (tmp_path / "videos").mkdir()
    (tmp_path / "not_clip").mkdir()
    for bad, why in ((tmp_path / "missing", "no such folder"), (tmp_path / "not_clip", "no config.json")):
        with pytest.raises(ValueError, match=why):
            curate_folder(tmp_path / "videos", tmp_path / "out", CurateConfig(clip_dir=str(bad)))
        with pytest.raises(ValueError, match=why):
            make_scorer(bad)
    assert not (tmp_path / "out").exists()  # nothing written
    run = subprocess.run(
        [sys.executable, "-m", "minisvd", "curate", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
         "--clip-dir", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: --clip-dir {tmp_path / 'missing'}: no such folder; give a local transformers CLIP model folder "
        "(config.json + weights), or leave --clip-dir out for the offline stand-in scorer"
    ]
