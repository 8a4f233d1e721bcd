"""Calibration on the trained fixture: llama.cpp and transformers see the same routing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemoe_fixtures.corpus import calibration_text
from packager.calibrate import calibrate, calibrate_ids, calibrate_to_file, resolve, tokenize
from packager.errors import PackError
from packager.usage import UsageProfile
from tests.conftest import ARCH_FIXTURES

pytestmark = pytest.mark.reference


FIXTURE = "qwen3moe-trained"
N_TOKENS = 1024


@pytest.fixture(scope="module")
def ckpt(fixture_checkpoint):
    return fixture_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def chunks(ckpt):
    return tokenize(resolve(ckpt), [calibration_text()], chunk=256, max_tokens=N_TOKENS)


@pytest.fixture(scope="module")
def llama_usage(ckpt, chunks) -> UsageProfile:
    return calibrate_ids(ckpt, chunks, engine="llama.cpp")


@pytest.mark.engine
@pytest.mark.reference
def test_engines_agree_on_identical_ids(ckpt, chunks, llama_usage):
    tf = calibrate_ids(ckpt, chunks, engine="transformers")
    ll = llama_usage
    assert (tf.source, ll.source) == ("transformers", "llama.cpp")
    assert tf.n_tokens == ll.n_tokens == sum(len(c) for c in chunks)
    assert tf.layers == ll.layers == (0, 1, 2, 3)
    for layer in tf.layers:
        a, b = np.array(tf.counts[layer]), np.array(ll.counts[layer])
        moved = np.abs(a - b).sum() / 2 / a.sum()  # share of selections that differ
        print(f"layer {layer}: {moved:.2%} of selections differ; counts {a.tolist()}")
        assert moved <= 0.01
        wa, wb = np.array(tf.weight_sum[layer]), np.array(ll.weight_sum[layer])
        assert np.abs(wa - wb).sum() <= 0.01 * wa.sum()
        assert tf.entropy[layer] == pytest.approx(ll.entropy[layer], rel=1e-3)


@pytest.mark.engine
def test_trained_routing_is_skewed(llama_usage):
    uniform = llama_usage.top_k / llama_usage.n_experts
    for layer, freq in llama_usage.frequencies().items():
        assert sum(freq) == pytest.approx(llama_usage.top_k)
        assert max(freq) > 2 * uniform, f"layer {layer} looks balanced: {freq}"


@pytest.mark.engine
def test_bundle_calibrates_without_a_checkpoint(bundle_factory, llama_usage, chunks):
    bundle = bundle_factory(FIXTURE, "Q8_0")
    usage = calibrate(bundle, [calibration_text()], engine="auto", chunk_tokens=256,
                      max_tokens=N_TOKENS)
    assert usage.source == "llama.cpp"
    # llama.cpp's tokenizer on the bundle produces the checkpoint tokenizer's ids.
    assert usage.n_tokens == llama_usage.n_tokens
    for layer in usage.layers:
        a, b = np.array(usage.counts[layer]), np.array(llama_usage.counts[layer])
        assert np.abs(a - b).sum() / 2 / a.sum() <= 0.05  # Q8_0 flips a few near-ties


@pytest.mark.engine
def test_calibrate_to_file_writes_profile_and_heatmap(ckpt, tmp_path):
    import matplotlib.image

    text = tmp_path / "calib.txt"
    text.write_text(calibration_text()[:4000], encoding="utf-8")
    out = tmp_path / "usage.json"
    png = tmp_path / "usage.png"
    made = calibrate_to_file(ckpt, [text], out, engine="llama.cpp", plot_png=png)
    assert UsageProfile.load(out) == made
    assert json.loads(out.read_text())["source"] == "llama.cpp"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "usage.json", "usage.png"]


def test_transformers_cannot_calibrate_a_bundle(bundle_factory):
    bundle = bundle_factory("qwen3moe-tiny", "F16")
    with pytest.raises(PackError, match="bundle holds only a GGUF"):
        calibrate(bundle, ["hello world"], engine="transformers")


def test_unknown_engine_and_missing_text(ckpt, tmp_path):
    with pytest.raises(PackError, match="unknown calibration engine 'onnx'"):
        calibrate(ckpt, ["hello world"], engine="onnx")  # type: ignore[arg-type]
    with pytest.raises(PackError, match="absent.txt: calibration text file not found"):
        calibrate_to_file(ckpt, [tmp_path / "absent.txt"], tmp_path / "u.json")


@pytest.mark.engine
@pytest.mark.reference
@pytest.mark.parametrize("name", ARCH_FIXTURES)
def test_engines_agree_for_every_family(name, fixture_checkpoint):
    """Each family's own selection rule (transformers router) matches llama.cpp's graph."""
    ck = fixture_checkpoint(name)
    ids = tokenize(resolve(ck), [calibration_text()], chunk=256, max_tokens=512)
    tf = calibrate_ids(ck, ids, engine="transformers")
    ll = calibrate_ids(ck, ids, engine="llama.cpp")
    assert tf.layers == ll.layers and tf.n_tokens == ll.n_tokens == 512
    for layer in tf.layers:
        a, b = np.array(tf.counts[layer]), np.array(ll.counts[layer])
        assert np.abs(a - b).sum() / 2 / a.sum() <= 0.02, (layer, a, b)
        # The scores too (DeepSeek-V3's are sigmoids, not a softmax): the weight each
        # expert received.
        w, v = np.array(tf.weight_sum[layer]), np.array(ll.weight_sum[layer])
        assert np.abs(w - v).sum() / w.sum() <= 0.02, (layer, w, v)
