"""One checkpoint, several device profiles: visibly different, justified bundles."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp
import pytest

from device_profiles import load_profile
from packager.api import PackOptions, pack, verify
from packager.errors import PackError

pytestmark = pytest.mark.engine


def test_camera_and_laptop_bundles_differ_and_run(bundle_factory):
    camera = json.loads(
        (bundle_factory("qwen3moe-trained", None, "camera-arm-2gb") / "manifest.json").read_text()
    )
    laptop = json.loads(
        (bundle_factory("qwen3moe-trained", None, "laptop-16gb") / "manifest.json").read_text()
    )
    assert camera["profile"]["name"] == "camera-arm-2gb"
    assert camera["quant"] in load_profile("camera-arm-2gb").quant_preferences
    assert laptop["quant"] in load_profile("laptop-16gb").quant_preferences
    assert camera["quant"] != laptop["quant"]
    assert camera["files"]["model.gguf"]["bytes"] < laptop["files"]["model.gguf"]["bytes"] / 2
    for m in (camera, laptop):
        assert m["plan"]["fits"] and m["plan"]["rationale"], "the plan and its reasons ship"
    bundle = bundle_factory("qwen3moe-trained", None, "camera-arm-2gb")
    assert verify(bundle).ok
    llm = llama_cpp.Llama(str(bundle / "model.gguf"), n_ctx=128, verbose=False)
    assert len(llm.create_completion("def main(", max_tokens=4)["choices"][0]["text"]) > 0


def test_profile_that_cannot_fit_fails_with_what_would(fixture_checkpoint, tmp_path):
    import device_profiles

    source = Path(device_profiles.__file__).with_name("camera-arm-2gb.toml")
    text = (
        source.read_text()
        .replace('name = "camera-arm-2gb"', 'name = "tiny-mcu"')
        .replace('model_memory = "1GiB"', 'model_memory = "2MiB"')
    )
    profile = tmp_path / "tiny-mcu.toml"
    profile.write_text(text)
    out = tmp_path / "b"
    with pytest.raises(PackError, match="does not fit profile tiny-mcu") as err:
        pack(
            PackOptions(
                src=str(fixture_checkpoint("qwen3moe-trained")),
                out_dir=out,
                profile=str(profile),
                reference=False,
            )
        )
    assert not out.exists()
    print(err.value)
