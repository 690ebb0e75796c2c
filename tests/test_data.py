"""Tests of cadcoder.data: one loader for every source, the collator, canonical numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from cadcoder import data as data_mod  # noqa: E402
from cadcoder.data import (  # noqa: E402
    CadCoderCollator,
    canonicalize_numbers,
    decode_image,
    load_cad_dataset,
)
from cadcoder.schema import GENCAD_COLUMNS  # noqa: E402

from cadcoder.real_sample import DEFAULT_SAMPLE as SAMPLE  # noqa: E402

N = 6  # rows used from the real sample (measurement data, only as realistic loader input)


@pytest.fixture(scope="module")
def jsonl_source(tmp_path_factory) -> Path:
    """A jsonl with image paths relative to it (the gencad_sample layout), N rows."""
    root = tmp_path_factory.mktemp("jsonl")
    (root / "images").mkdir()
    lines = []
    for line in (SAMPLE / "programs.jsonl").read_text().splitlines()[:N]:
        rec = json.loads(line)
        shutil.copy(SAMPLE / rec["image"], root / rec["image"])
        lines.append(json.dumps(rec))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def _signature(ds) -> list[tuple]:
    return [(r["deepcad_id"], r["cadquery"], np.asarray(decode_image(r["image"])).tobytes()) for r in ds]


def test_every_source_gives_the_same_schema_and_rows(jsonl_source, tmp_path):
    ref = load_cad_dataset(str(jsonl_source), split="train")
    assert tuple(ref.column_names) == GENCAD_COLUMNS and len(ref) == N
    assert ref.features["image"] == datasets.Image(decode=False)
    sig = _signature(ref)
    assert decode_image(ref[0]["image"]).size == (448, 448)

    # save_to_disk folder (DatasetDict and plain Dataset)
    ref_decoded = ref.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ref_decoded, "test": ref_decoded.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    ref_decoded.save_to_disk(str(tmp_path / "single"))
    # parquet with embedded bytes, and parquet with relative paths next to it
    ref_decoded.to_parquet(str(tmp_path / "embedded.parquet"))
    rel = datasets.Dataset.from_dict({
        "image": [f"images/{r['deepcad_id']}.png" for r in ref], "cadquery": ref["cadquery"],
        "deepcad_id": ref["deepcad_id"],
    })
    (tmp_path / "images").mkdir()
    for r in ref:
        decode_image(r["image"]).save(tmp_path / "images" / f"{r['deepcad_id']}.png")
    rel.to_parquet(str(tmp_path / "paths.parquet"))
    # a folder of split files
    (tmp_path / "splits").mkdir()
    shutil.copy(jsonl_source, tmp_path / "splits" / "train.jsonl")
    shutil.copytree(jsonl_source.parent / "images", tmp_path / "splits" / "images")

    sources = {
        "dict": load_cad_dataset(str(tmp_path / "dd"), split="train"),
        "single": load_cad_dataset(tmp_path / "single", split="train"),
        "embedded": load_cad_dataset(str(tmp_path / "embedded.parquet"), split="train"),
        "paths": load_cad_dataset(str(tmp_path / "paths.parquet"), split="train"),
        "folder": load_cad_dataset(str(tmp_path / "splits"), split="train"),
    }
    for name, ds in sources.items():
        assert tuple(ds.column_names) == GENCAD_COLUMNS, name
        assert ds.features == ref.features, name
        assert _signature(ds) == sig, name
    assert set(load_cad_dataset(str(tmp_path / "dd"))) == {"train", "test"}
    # defaults filled for the missing optional columns
    assert ref[0]["prompt"].startswith("Generate the CADQuery code") and ref[0]["hundred_subset"] is False
    assert ref[0]["token_count"] > 100


def test_hub_path_is_normalised_too(monkeypatch, jsonl_source):
    """The Hub branch (cannot download here): datasets.load_dataset is faked with a raw Hub-like split."""
    raw = datasets.load_dataset("json", data_files=str(jsonl_source), split="train")
    # a Hub copy holds images as datasets.Image values, plus every GenCAD column
    hub_like = datasets.Dataset.from_dict({
        "image": [{"bytes": (jsonl_source.parent / p).read_bytes(), "path": None} for p in raw["image"]],
        "deepcad_id": raw["deepcad_id"], "cadquery": raw["cadquery"], "token_count": [1] * len(raw),
        "prompt": ["p"] * len(raw), "hundred_subset": [True] * len(raw), "extra": [0] * len(raw),
    }, features=datasets.Features({
        "image": datasets.Image(), "deepcad_id": datasets.Value("string"), "cadquery": datasets.Value("string"),
        "token_count": datasets.Value("int64"), "prompt": datasets.Value("string"),
        "hundred_subset": datasets.Value("bool"), "extra": datasets.Value("int64"),
    }))
    calls = []

    def fake_load_dataset(name, split=None, streaming=False, **kw):
        calls.append((name, split, streaming))
        return hub_like.to_iterable_dataset() if streaming else hub_like

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_cad_dataset(split="test")
    assert calls[-1] == ("CADCODER/GenCAD-Code", "test", False)
    assert tuple(ds.column_names) == GENCAD_COLUMNS and ds[0]["hundred_subset"] is True
    stream = load_cad_dataset("CADCODER/GenCAD-Code", split="test", streaming=True)
    assert calls[-1] == ("CADCODER/GenCAD-Code", "test", True)
    first = next(iter(stream))
    assert sorted(first) == sorted(GENCAD_COLUMNS)
    assert decode_image(first["image"]).size == (448, 448)


def test_clear_errors(jsonl_source, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cad_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cad_dataset("./no/such/folder")
    # missing column
    (tmp_path / "nocode.jsonl").write_text(json.dumps({"image": "images/a.png", "code": "x"}) + "\n")
    with pytest.raises(ValueError, match="no column 'cadquery'"):
        load_cad_dataset(str(tmp_path / "nocode.jsonl"))
    # image path that does not exist
    (tmp_path / "noimg.jsonl").write_text(json.dumps({"image": "images/absent.png", "cadquery": "x"}) + "\n")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_cad_dataset(str(tmp_path / "noimg.jsonl"))
    # unreadable image file
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "bad" / "d.jsonl").write_text(json.dumps({"image": "broken.png", "cadquery": "x"}) + "\n")
    with pytest.raises(ValueError, match="unreadable"):
        load_cad_dataset(str(tmp_path / "bad" / "d.jsonl"))
    # unreadable embedded bytes surface at decode time, naming the row
    with pytest.raises(ValueError, match="unreadable image \\(row r7\\)"):
        decode_image({"bytes": b"garbage", "path": None}, row="r7")
    with pytest.raises(ValueError, match="split 'nope'"):
        load_cad_dataset(str(jsonl_source), split="nope")
    # Hub failure (offline) is reported with the fix
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_cad_dataset("someone/some-dataset")


# --------------------------------------------------------------------------- canonical numbers
def test_canonicalize_numbers_format():
    code = ("wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.7109375, 0.0, 0.0), cq.Vector(1.0, 6.123233995736766e-17, "
            "-6.123233995736766e-17), cq.Vector(6.123233995736766e-17, -1.0, 6.123233995736766e-17)))\n"
            "loop12=wp_sketch0.moveTo(0.561266447368421, -0.0).circle(0.24753289473684212)\n"
            "solid0=wp_sketch0.add(loop12).extrude(0.75, both=True)")
    out = canonicalize_numbers(code, decimals=4)
    assert out == ("wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.7109, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, -1, 0)))\n"
                   "loop12=wp_sketch0.moveTo(0.5613, 0).circle(0.2475)\n"
                   "solid0=wp_sketch0.add(loop12).extrude(0.75, both=True)")
    assert canonicalize_numbers("f(0.123456)", decimals=2) == "f(0.12)"
    # significant digits keep thin plates (1/128) thin, where fixed decimals would not
    assert canonicalize_numbers("extrude(0.0078125), f(0.24753289473684212)", significant=4) == "extrude(0.007812), f(0.2475)"
    assert canonicalize_numbers("extrude(0.0078125)", decimals=3) == "extrude(0.008)"
    assert len(canonicalize_numbers(code)) < len(code)
    with pytest.raises(ValueError):
        canonicalize_numbers(code, decimals=-1)
    with pytest.raises(ValueError):
        canonicalize_numbers(code, significant=0)


def test_canonical_numbers_keep_geometry():
    from cadcoder.sandbox import Sandbox

    programs = [json.loads(line)["cadquery"] for line in (SAMPLE / "programs.jsonl").read_text().splitlines()[:4]]
    with Sandbox(num_workers=2, timeout=20) as box:
        ref = box.map(programs)
        canon = box.map([canonicalize_numbers(p, 4) for p in programs])
    for r, c in zip(ref, canon):
        assert r.ok and c.ok
        assert abs(c.value["volume"] - r.value["volume"]) / r.value["volume"] < 1e-3


# --------------------------------------------------------------------------- collator
@pytest.fixture(scope="module")
def processor(jsonl_source):
    from processing_cadcoder import CadCoderImageProcessor, CadCoderProcessor

    from cadcoder.tokenizer import train_code_tokenizer

    texts = [json.loads(line)["cadquery"] for line in jsonl_source.read_text().splitlines()]
    tok = train_code_tokenizer(texts * 3, vocab_size=400)
    return CadCoderProcessor(CadCoderImageProcessor(size=64, num_channels=1), tok, num_image_tokens=4)


def test_collator_masks_labels_by_attention_mask(processor, jsonl_source):
    ds = load_cad_dataset(str(jsonl_source), split="train")
    rows = [ds[i] for i in range(3)]
    batch = CadCoderCollator(processor)(rows)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 3
    assert (labels[mask == 0] == -100).all()
    eos = processor.tokenizer.eos_token_id
    assert processor.tokenizer.pad_token_id == eos  # the reason for masking by attention mask
    for i in range(3):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # right padding
        assert labels[i, n - 1] == eos  # the final EOS is supervised
        supervised = labels[i][labels[i] != -100]
        assert len(supervised) > 10
        if n < ids.shape[1]:
            assert (ids[i, n:] == eos).all()
    assert batch["pixel_values"].shape[0] == 3


def test_collator_canonical_numbers_shortens(processor, jsonl_source):
    ds = load_cad_dataset(str(jsonl_source), split="train")
    rows = [ds[i] for i in range(2)]
    plain = CadCoderCollator(processor)(rows)
    canon = CadCoderCollator(processor, canonical_numbers=True)(rows)
    assert canon["attention_mask"].sum() < plain["attention_mask"].sum()


def test_collator_too_long(processor, jsonl_source):
    ds = load_cad_dataset(str(jsonl_source), split="train")
    rows = [ds[i] for i in range(3)]
    lengths = CadCoderCollator(processor)(rows)["attention_mask"].sum(1).tolist()
    limit = int(sorted(lengths)[1])  # the longest row exceeds it
    with pytest.raises(ValueError, match="exceed max_length"):
        CadCoderCollator(processor, max_length=limit)(rows)
    with pytest.warns(UserWarning):
        dropped = CadCoderCollator(processor, max_length=limit, on_too_long="drop")(rows)
    assert dropped["input_ids"].shape[0] == sum(n <= limit for n in lengths)
    with pytest.warns(UserWarning):
        cut = CadCoderCollator(processor, max_length=limit, on_too_long="truncate")(rows)
    assert cut["input_ids"].shape == (3, limit)
    with pytest.raises(ValueError, match="needs 'image' and 'cadquery'"):
        CadCoderCollator(processor)([{"cadquery": "x"}])


def test_lazy_transform_keeps_images_encoded(jsonl_source):
    ds = load_cad_dataset(str(jsonl_source), split="train")
    # nothing decoded or tokenised up front: the image column is still an encoded reference
    assert isinstance(ds[0]["image"], dict) and set(ds[0]["image"]) == {"bytes", "path"}
    assert not hasattr(data_mod, "_cache")


def test_one_schema_for_loader_and_builder():
    """cadcoder.schema is the one home of the GenCAD-Code schema, and importing it loads nothing heavy."""
    import subprocess
    import sys

    from cadcoder import schema, synth

    for name in ("GENCAD_PROMPT", "GENCAD_COLUMNS", "SPLIT_NAMES", "REQUIRED_COLUMNS", "DEFAULT_HUB_DATASET"):
        assert getattr(data_mod, name) is getattr(schema, name)
    assert synth.GENCAD_PROMPT is schema.GENCAD_PROMPT and synth.approx_token_count is schema.approx_token_count
    assert schema.gencad_features(decode_images=False)["image"] == datasets.Image(decode=False)
    assert tuple(schema.gencad_features()) == schema.GENCAD_COLUMNS
    probe = "import sys, cadcoder.schema; print(sorted(m for m in ('datasets', 'torch', 'PIL') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_decode_image_puts_transparency_on_white_and_names_bad_rows(tmp_path):
    """decode_image reads every encoded form through processing_cadcoder.to_rgb_image; errors name the row."""
    import io

    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    rgba.save(tmp_path / "part.png")
    for value in (rgba, buf.getvalue(), {"bytes": buf.getvalue(), "path": None}, {"bytes": None, "path": str(tmp_path / "part.png")},
                  str(tmp_path / "part.png")):
        img = decode_image(value)
        assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (10, 20, 30)
    assert decode_image(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(ValueError, match=r"unreadable image \(row r1\)"):
        decode_image(str(tmp_path / "missing.png"), row="r1")
