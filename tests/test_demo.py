"""`cion demo --quick` end to end (CI's smoke test of the whole flow) and the report's verdicts."""
from __future__ import annotations

import json

import pytest

from cion.demo.report import ordering


def test_ordering_verdicts_use_the_seed_spread():
    two = [{}, {}]
    zs = {"cion": {"mAP": 0.30, "mAP_std": 0.01, "seeds": two},
          "tracklet": {"mAP": 0.25, "mAP_std": 0.01, "seeds": two},
          "instance": {"mAP": 0.24, "mAP_std": 0.02, "seeds": two},
          "random": {"mAP": 0.26, "mAP_std": 0.0, "seeds": two}}
    v = ordering(zs)
    assert v["cion > tracklet"]["beyond_spread"]
    assert v["tracklet > instance"]["holds"] and not v["tracklet > instance"]["beyond_spread"]
    assert not v["instance > random"]["holds"]
    assert v["cion > tracklet"]["gap"] == pytest.approx(0.05)
    assert v["cion > instance"]["gap"] == pytest.approx(0.06) and v["cion > instance"]["beyond_spread"]
    one = {m: dict(r, seeds=[{}]) for m, r in zs.items()}
    assert ordering(one)["cion > tracklet"]["beyond_spread"] is None
    # paired (same seed) differences
    paired = {m: dict(r, seeds=[{"seed": 0, "mAP": r["mAP"] + d}, {"seed": 1, "mAP": r["mAP"] - d}])
              for (m, r), d in zip(zs.items(), (0.01, -0.03, 0.0, 0.0))}
    gaps = ordering(paired)["cion > tracklet"]["per_seed"]
    assert gaps == pytest.approx([0.09, 0.01])


def test_demo_quick_end_to_end(tmp_path, one_torch_thread, capsys):
    """The default path: 2 pre-training runs at a time in worker processes."""
    import os

    import pandas as pd

    from cion.cli import main

    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--out", str(out)])
    assert exit_info.value.code in (0, None)
    log = capsys.readouterr().out
    if (os.cpu_count() or 1) >= 2:                  # runs came back from the process pool
        assert "2 at a time" in log and "[demo]   done 6/6:" in log, log[-2000:]
    results = json.loads((out / "results.json").read_text())
    zs = results["zero_shot"]
    assert set(zs) == {"random", "instance", "tracklet", "cion_video", "cion", "oracle"}
    for row in zs.values():
        assert 0.0 <= row["mAP"] <= 1.0 and 0.0 <= row["rank1"] <= 1.0
    # the trained runs really trained: each wrote a backbone and took the whole budget
    trained = [r for r in results["runs"] if r["method"] != "random"]
    assert len(trained) == 5 and all(r["steps"] == results["plan"]["steps"] for r in trained)
    # each method trained on its own labelling, and the table row of a method is its own run
    counts = {}
    for r in trained:
        labels = pd.read_parquet(out / "labels" / f"{r['method']}.parquet")["identity"]
        assert r["manifest"] == str(out / "labels" / f"{r['method']}.parquet")
        assert r["identities"] == labels[labels >= 0].nunique()
        counts[r["method"]] = r["identities"]
    for r in results["runs"]:
        assert zs[r["method"]]["seeds"] == [{"seed": r["seed"], "mAP": r["mAP"], "rank1": r["rank1"]}]
    assert counts["instance"] > counts["tracklet"] > counts["cion"]   # labellings differ
    assert len(set(counts.values())) >= 4
    # every run, the random initialisation included, was also fine-tuned and scored
    assert set(results["finetuned"]) == set(zs)
    assert all("finetuned" in r for r in results["runs"])
    random_row = next(r for r in results["runs"] if r["method"] == "random")
    assert random_row["finetuned"]["mAP"] > random_row["mAP"]      # 30 supervised steps help
    # the USL row (Cluster Contrast without labels) for random / instance / tracklet / CION
    assert set(results["usl"]) == {"random", "instance", "tracklet", "cion"}
    usl_runs = [r for r in results["runs"] if "usl" in r]
    assert len(usl_runs) == 4 and all(len(r["usl"]["clusters"]) == 2 for r in usl_runs)
    assert all(0.0 <= r["usl"]["mAP"] <= 1.0 for r in usl_runs)
    assert "Cluster Contrast" in (out / "report.md").read_text()
    # denoising stages against ground truth: raw, then the three levels
    stages = results["denoising"]["stages"]
    assert [s["level"] for s in stages] == ["raw", "tracklet", "video", "cross"]
    assert stages[1]["precision"] >= stages[0]["precision"]   # level 1 removes noise
    # the variants table: the library defaults first, the plan's setting once and marked, and
    # its row is the pipeline's own last stage
    den = results["denoising"]
    variants = den["variants"]
    assert (variants[0]["centre"], variants[0]["whiten"], variants[0]["false_links"]) == (None, None, 0.1)
    used = [v for v in variants if v["used"]]
    assert len(used) == 1 and (used[0]["centre"], used[0]["whiten"]) == (den["centre"], den["whiten"])
    assert used[0]["precision"] == pytest.approx(stages[-1]["precision"])
    assert used[0]["recall"] == pytest.approx(stages[-1]["recall"])
    assert 0.0 < den["same_person_pair_share"] < 1.0
    report = (out / "report.md").read_text()
    for name, rel in results["figures"].items():
        assert (out / rel).stat().st_size > 1000, name
        assert rel in report or name.startswith("tsne") or name.startswith("ranked"), name
    assert "Does the paper's ordering hold?" in report
    assert "true identities (a perfect denoiser)" in report          # the oracle's reading
    assert "**Quick run**" in report                                  # no comparison at 80 steps
    assert "After a short supervised fine-tune" in report
    assert "What each choice buys" in report and "**(used)**" in report
    pairs = results["pair_distances"]
    assert set(pairs) == set(zs) and all(len(r["seeds"]) == 1 for r in pairs.values())
    assert abs(pairs["cion"]["cross-video margin"] - (pairs["cion"]["other person, other video"]
                                                      - pairs["cion"]["same person, other video"])) < 1e-12
    assert "### Why: what each backbone makes of pairs" in report and "pair_distances.png" in report


def test_demo_refuses_an_unwritable_out(tmp_path, capsys):
    from cion.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--out", str(blocker / "sub")])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err
