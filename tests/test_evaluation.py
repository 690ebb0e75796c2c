"""Tests of cadcoder.evaluation, the cad_iou metric and `cadcoder evaluate` (all programs run sandboxed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cadcoder.evaluation import constant_program_baseline, evaluate_programs, format_report
from cadcoder.real_sample import DEFAULT_SAMPLE
from cadcoder.sandbox import FAILURE_REASONS, Sandbox

REPO = Path(__file__).resolve().parents[1]
GENCAD = DEFAULT_SAMPLE / "programs.jsonl"

# Ordinary CadQuery programs, written for these tests.
HAND_WRITTEN = {
    "flange": (
        "import cadquery as cq\n"
        "plate = cq.Workplane('XY').circle(3.0).extrude(0.5)\n"
        "hub = cq.Workplane('XY').circle(1.2).extrude(2.0)\n"
        "solid = plate.union(hub).faces('>Z').workplane().hole(1.0)\n"
        "solid = solid.faces('<Z').workplane().polarArray(2.2, 0, 360, 6).hole(0.4)\n"
    ),
    "bracket": (
        "import cadquery as cq\n"
        "result = (cq.Workplane('XZ').polyline([(0, 0), (5, 0), (5, 0.6), (0.6, 0.6), (0.6, 4), (0, 4)]).close()\n"
        "          .extrude(3).edges('|Y').fillet(0.1))\n"
    ),
    "revolved_knob": (
        "import cadquery as cq\nimport math\n"
        "pts = [(0, 0), (2, 0), (2, 0.5), (1.2, 1.0), (1.2, 2.5), (0, 2.5)]\n"
        "part = cq.Workplane('XZ').polyline(pts).close().revolve(360, (0, 0, 0), (0, 1, 0))\n"
    ),
    "loft": (
        "import cadquery as cq\n"
        "solid = cq.Workplane('XY').rect(3, 3).workplane(offset=2).circle(1).loft()\n"
    ),
    "shelled_box": "import cadquery as cq\nsolid = cq.Workplane('XY').box(4, 3, 2).faces('>Z').shell(-0.2)\n",
    "show_object_sweep": (
        "import cadquery as cq\n"
        "path = cq.Workplane('XZ').spline([(0, 0), (1, 2), (3, 3)])\n"
        "show_object(cq.Workplane('XY').circle(0.3).sweep(path))\n"
    ),
    "numpy_pattern": (
        "import cadquery as cq\nimport numpy as np\n"
        "base = cq.Workplane('XY').box(6, 2, 0.5)\n"
        "pins = [(float(x), 0.0) for x in np.linspace(-2.5, 2.5, 4)]\n"
        "solid = base.faces('>Z').workplane().pushPoints(pins).circle(0.3).extrude(1.0)\n"
    ),
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(num_workers=2, timeout=20.0) as sb:
        yield sb


def _box(a, b, c, dx=0.0):
    return f"import cadquery as cq\nsolid = cq.Workplane('XY').box({a}, {b}, {c}).translate(({dx}, 0, 0))\n"


def test_hand_written_programs_are_valid_and_self_consistent(sandbox):
    codes = list(HAND_WRITTEN.values())
    report = evaluate_programs(codes, codes, sandbox=sandbox, progress=False, chamfer_points=256)
    assert report["statuses"] == ["ok"] * len(codes), report["errors"]
    assert report["ious"] == pytest.approx([1.0] * len(codes), abs=1e-6)
    assert report["valid_syntax_rate"] == 1.0
    assert report["reference_failures"]["count"] == 0


def test_gencad_sample_programs_score_one_against_themselves(sandbox):
    if not GENCAD.is_file():
        pytest.skip(f"{GENCAD} not found: the GenCAD-Code sample lives in shared/ beside the repository clone")
    programs = [json.loads(line)["cadquery"] for line in GENCAD.read_text().splitlines() if line.strip()]
    assert len(programs) == 34
    report = evaluate_programs(programs, programs, sandbox=sandbox, progress=False, chamfer_points=0, fast=False)
    assert report["statuses"] == ["ok"] * 34, [(i, e) for i, e in enumerate(report["errors"]) if e]
    assert min(report["ious"]) == pytest.approx(1.0, abs=1e-6)


def test_report_counts_failures_and_reference_failures(sandbox):
    preds = [_box(1, 2, 3), _box(1, 2, 3.3), "solid = (", "import os\nsolid = 1", "x = 1", _box(1, 1, 1)]
    refs = [_box(1, 2, 3, dx=5), _box(1, 2, 3), _box(1, 2, 3), _box(1, 2, 3), _box(1, 2, 3), "solid = cq.Workplane().rect(1, 1)"]
    report = evaluate_programs(preds, refs, sandbox=sandbox, progress=False, protocol="bbox", chamfer_points=128)
    assert report["statuses"] == ["ok", "ok", "syntax_error", "forbidden", "no_result", "ok"]
    assert report["failures"]["syntax_error"] == 1 and report["failures"]["forbidden"] == 1
    assert set(report["failures"]) == set(FAILURE_REASONS)
    assert report["reference_failures"] == {"count": 1, "indices": [5], "reasons": {"invalid_shape": 1}}
    assert report["ious"][0] == pytest.approx(1.0, abs=1e-6)
    expect = (1 / 3.3 * 2 / 3.3) / (1 / 3 * 2 / 3)  # bbox protocol, both boxes have longest side along z
    assert report["ious"][1] == pytest.approx(expect, abs=1e-3)
    assert report["ious"][5] is None
    assert report["iou_mean"] == pytest.approx((1.0 + expect) / 2, abs=1e-3)
    assert report["iou_mean_all"] == pytest.approx((1.0 + expect) / 5, abs=1e-3)
    assert report["valid_syntax_rate"] == pytest.approx(3 / 6)
    assert report["distinct_predictions"] == pytest.approx(1.0)
    assert "valid_syntax_rate" in format_report(report)


def test_chance_constant_baseline_and_distinctness(sandbox):
    refs = [_box(1, 2, 3), _box(1, 1, 4), HAND_WRITTEN["flange"], HAND_WRITTEN["loft"]]
    preds = [_box(1, 2, 3), _box(1, 2, 3).replace('box(', 'box(  '), _box(1, 2, 3) + '\n\n', HAND_WRITTEN["loft"]]
    r1 = evaluate_programs(preds, refs, sandbox=sandbox, progress=False, with_chance=True, seed=3, chamfer_points=0, fast=True)
    r2 = evaluate_programs(preds, refs, sandbox=sandbox, progress=False, with_chance=True, seed=3, chamfer_points=0, fast=True)
    assert r1["distinct_predictions"] == pytest.approx(2 / 4)
    assert 0 < r1["iou_chance"] < 1 and r1["iou_chance_pairs"] == 4
    assert r1["iou_chance"] == r2["iou_chance"]
    base = constant_program_baseline(refs, sandbox=sandbox, progress=False, chamfer_points=0, fast=True)
    assert base["distinct_predictions"] == pytest.approx(1 / 4)
    assert base["valid_syntax_rate"] == 1.0 and base["iou_mean"] < 1.0


def test_resume_from_cache(sandbox, tmp_path):
    cache = tmp_path / "cache.jsonl"
    preds, refs = [_box(1, 2, 3), "solid = ("], [_box(1, 2, 3.5), _box(1, 2, 3)]
    first = evaluate_programs(preds, refs, sandbox=sandbox, progress=False, cache_path=cache, chamfer_points=64)
    assert len(cache.read_text().splitlines()) == 2
    closed = Sandbox(num_workers=1)
    closed.close()  # any attempt to run a program now raises, so the rerun must come from the cache
    again = evaluate_programs(preds, refs, sandbox=closed, progress=False, cache_path=cache, chamfer_points=64)
    assert again["ious"] == first["ious"] and again["statuses"] == first["statuses"]


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="one reference per prediction"):
        evaluate_programs(["a"], [], progress=False)
    with pytest.raises(ValueError, match="aligned"):
        evaluate_programs(["a"], ["b"], protocol="iou", progress=False)


def test_metric_module_via_evaluate_load():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(REPO / "metrics" / "cad_iou"))
    out = metric.compute(predictions=[_box(1, 2, 3), "solid = ("], references=[_box(2, 4, 6, dx=1), _box(1, 2, 3)], protocol="aligned", timeout=20, num_workers=1)
    assert out["statuses"] == ["ok", "syntax_error"]
    assert out["ious"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["valid_syntax_rate"] == 0.5 and out["iou_mean_all"] == pytest.approx(0.5, abs=1e-6)


def test_cli_writes_report(tmp_path, capsys):
    from cadcoder.cli import main

    preds = tmp_path / "preds.jsonl"
    rows = [{"prediction": _box(1, 2, 3), "reference": _box(1, 2, 3)}, {"prediction": "x = 1", "reference": _box(1, 2, 3)}]
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "report.json"
    assert main(["evaluate", str(preds), "--out", str(out), "--num-workers", "1", "--protocol", "bbox", "--fast"]) == 0
    report = json.loads(out.read_text())
    assert report["statuses"] == ["ok", "no_result"] and report["protocol"] == "bbox"
    assert "iou_mean_all" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prediction": "x"}) + "\n")
    with pytest.raises(ValueError, match="reference"):
        main(["evaluate", str(bad)])


def test_distinct_share_is_the_one_rule_of_the_report():
    from cadcoder.evaluation import distinct_share

    programs = ["box(1,2)", "box( 1, 2 )\n", "box(1, 3)", "box(1,3) "]
    assert distinct_share(programs) == pytest.approx(2 / 4)
    assert distinct_share([]) == 0.0


def test_execution_metrics_flattens_the_report(sandbox):
    from cadcoder.evaluation import EXECUTION_KEYS, execution_metrics

    box = _box(1, 2, 3)
    metrics = execution_metrics([box, "solid = 1"], [box, box], sandbox=sandbox, progress=False)
    assert set(EXECUTION_KEYS) <= set(metrics)
    assert metrics["valid_syntax_rate"] == pytest.approx(0.5) and metrics["distinct_predictions"] == pytest.approx(1.0)
    assert any(k.startswith("failures_") for k in metrics)
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())


# ---------------------------------------------------------------------------------------------- score hacking
HACK_REFERENCE = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.0, 2.0, 1.0)\n"
HONEST = "solid = cq.Workplane('XY').box(1.0, 2.0, 0.5).faces('>Z').workplane().hole(0.4)\n"
MINE = "mine = cq.Workplane('XY').box(1.0, 2.0, 0.5).faces('>Z').workplane().hole(0.4).val()\n"
# Each program monkeypatches what the metric scores with, then builds the honest solid.
SCORE_HACKS = {
    "patched reference loader": MINE + "cq.Shape.importBrep = lambda f: mine\n" + HONEST,
    "patched Volume": "cq.Shape.Volume = lambda self: 1.0\n" + HONEST,
    "patched intersect/fuse": ("cq.Shape.intersect = lambda self, *a, **k: self\ncq.Shape.fuse = lambda self, *a, **k: self\n"
                               "cq.Workplane.intersect = lambda self, *a, **k: self\n" + HONEST),
    "patched isValid": "cq.Shape.isValid = lambda self: True\n" + HONEST,
    "patched numpy": "import numpy as np\nnp.argmax = lambda *a, **k: 0\nnp.minimum = lambda a, b, *x, **k: a\n" + HONEST,
    "printed fake score": "print('{\"iou\": 1.0, \"chamfer\": 0.0}')\n" + HONEST,
}


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_monkeypatching_programs_score_exactly_the_honest_solid(sandbox, fast):
    names = list(SCORE_HACKS)
    preds = [SCORE_HACKS[n] for n in names] + [HONEST]
    report = evaluate_programs(preds, [HACK_REFERENCE] * len(preds), sandbox=sandbox, progress=False,
                               fast=fast, chamfer_points=256)
    assert report["statuses"][-1] == "ok", report["errors"][-1]
    honest_iou, honest_chamfer = report["ious"][-1], report["chamfers"][-1]
    assert 0.2 < honest_iou < 0.9 and honest_chamfer > 0
    for name, status, iou, chamfer in zip(names, report["statuses"], report["ious"], report["chamfers"]):
        assert status == "ok", name  # each of these builds a valid solid, so it is scored
        assert (iou, chamfer) == (honest_iou, honest_chamfer), name


def test_metric_module_scores_a_patched_reference_loader_honestly():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(REPO / "metrics" / "cad_iou"))
    hacked = SCORE_HACKS["patched reference loader"]
    out = metric.compute(predictions=[hacked, HONEST], references=[HACK_REFERENCE] * 2, num_workers=1, timeout=20)
    assert out["statuses"] == ["ok", "ok"], out["errors"]
    assert out["ious"][0] == out["ious"][1] < 0.9


def test_clean_scoring_reports_a_bad_brep_as_invalid_shape(sandbox):
    from cadcoder.clean_scoring import run_to_brep, score_breps

    ref = run_to_brep(sandbox, [HACK_REFERENCE])[HACK_REFERENCE]
    bad, good = score_breps(sandbox, [{"candidate_brep": b"not a BREP", "reference_brep": ref.value},
                                      {"candidate_brep": ref.value, "reference_brep": ref.value}])
    assert bad.status == "invalid_shape" and "BREP" in bad.error
    assert good.ok and good.value["iou"] == pytest.approx(1.0, abs=1e-6)


def _scoring_requests(sandbox) -> list[dict]:
    from cadcoder.clean_scoring import run_to_brep

    solids = run_to_brep(sandbox, HAND_WRITTEN.values())
    breps = [solids[p].value for p in HAND_WRITTEN.values()]
    reference = breps[0]
    requests = [{"candidate_brep": b, "reference_brep": reference, "fast": fast} for b in breps for fast in (True, False)]
    requests.insert(3, {"candidate_brep": b"not a BREP", "reference_brep": reference})
    requests.insert(6, {"candidate_brep": breps[1], "reference_brep": reference, "protocol": "no such protocol"})
    requests.append({"candidate_brep": breps[2], "reference_brep": breps[3], "chamfer_points": 256})
    return requests


def test_batched_clean_scoring_gives_what_one_child_per_candidate_gives(sandbox):
    from cadcoder.clean_scoring import clean_result, clean_score_job, score_breps

    requests = _scoring_requests(sandbox)
    alone = [clean_result(r) for r in sandbox.map([clean_score_job(**q) for q in requests])]
    seen: dict[int, str] = {}
    batched = score_breps(sandbox, requests, on_result=lambda i, res: seen.setdefault(i, res.status))
    assert [r.status for r in batched] == [r.status for r in alone]
    assert batched[3].status == "invalid_shape" and "no such protocol" in batched[6].error
    assert [r.value for r in batched if r.ok] == [r.value for r in alone if r.ok]
    assert seen == {i: r.status for i, r in enumerate(batched)}


def test_a_failed_scoring_batch_is_scored_again_one_candidate_per_child(sandbox):
    from cadcoder.clean_scoring import score_breps
    from cadcoder.sandbox import SandboxResult
    from cadcoder.tasks import SCORE_BREP_BATCH

    class CrashingBatches:
        """The sandbox, except that every batch job comes back crashed."""

        num_workers, timeout = sandbox.num_workers, sandbox.timeout
        batch_jobs = 0

        def map(self, jobs, on_result=None, **kwargs):
            out = []
            for i, job in enumerate(jobs):
                if job.task == SCORE_BREP_BATCH:
                    self.batch_jobs += 1
                    res = SandboxResult("crashed", error="killed by signal SIGSEGV")
                else:
                    res = sandbox.map([job])[0]
                out.append(res)
                if on_result is not None:
                    on_result(i, res)
            return out

    requests = _scoring_requests(sandbox)
    crashing = CrashingBatches()
    rescored = score_breps(crashing, requests)
    assert crashing.batch_jobs > 0
    assert [r.status for r in rescored] == [r.status for r in score_breps(sandbox, requests)]
    assert rescored[0].ok and rescored[0].value["iou"] == pytest.approx(1.0, abs=1e-6)
