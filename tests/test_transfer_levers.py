"""Tests of the transfer levers (cadcoder.quickstart_variants): each lever changes one thing, and its larger set
is a faithful extension."""

from __future__ import annotations

from cadcoder import quickstart_variants as qv


def _overrides(command: list[str]) -> dict[str, str]:
    args = command[command.index("configs/quickstart.json") + 1:]
    return dict(zip(args[::2], args[1::2]))


def test_every_lever_changes_one_thing_against_base(tmp_path):
    variants = qv.lever_variants(list(qv.LEVERS), tmp_path / "data", base_num=500, data_factor=3, max_steps=40)
    commands = {lever: _overrides(qv.train_command(lever, tmp_path, 0, variants)) for lever in variants}
    base = commands["base"]
    assert base["--max_steps"] == "40" and base["--synth_num"] == "500"
    assert base["--test_samples"] == "0"  # the real sample is the test set here
    changed = {lever: {k for k in set(c) | set(base) if c.get(k) != base.get(k)} - {"--output_dir"}
               for lever, c in commands.items()}
    assert changed["base"] == set()
    assert changed["random_render"] == {"--dataset", "--synth_render_style"}
    assert commands["random_render"]["--synth_render_style"] == "random"
    assert changed["more_data"] == {"--dataset", "--synth_num"} and commands["more_data"]["--synth_num"] == "1500"
    assert changed["larger_model"] == {"--n_layer", "--n_embd", "--n_head"}  # same data folder as base


def test_more_data_set_started_from_base_equals_a_fresh_build(tmp_path):
    import datasets

    from cadcoder.synth import build_synthetic_mix

    kw = dict(complexities=[0, 1], seed=3, workers=1, image_size=48, progress=False, chunk_size=4)
    small, big, fresh = tmp_path / "base-6", tmp_path / "base-12", tmp_path / "fresh-12"
    build_synthetic_mix(6, small, **kw)
    qv.start_from_smaller_set(small, big)
    assert (big.with_name(big.name + ".parts") / "complexity-0").is_dir()
    extended = datasets.load_from_disk(str(build_synthetic_mix(12, big, **kw)))
    scratch = datasets.load_from_disk(str(build_synthetic_mix(12, fresh, **kw)))
    rows = lambda dd: [(r["deepcad_id"], r["cadquery"], r["image"].tobytes()) for s in dd for r in dd[s]]  # noqa: E731
    assert rows(extended) == rows(scratch)
    small_ids = {i for s in datasets.load_from_disk(str(small)).values() for i in s["deepcad_id"]}
    assert len(small_ids) == 6
    assert small_ids <= {i for s in extended.values() for i in s["deepcad_id"]}
