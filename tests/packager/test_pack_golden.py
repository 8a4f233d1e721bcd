"""Golden bytes: a pack of each family's numpy-only checkpoint gives the recorded sha256.

The checkpoints (tests/packager/synthetic.py) are the same on every machine, so a changed hash
means the packager wrote different bytes: a family's mapping, a hyper-parameter, the expert
layout or the manifest moved. When a change is meant to alter the bytes, say why in the commit
and record the new hashes (`python -m tests.packager.test_pack_golden` prints them).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from packager.api import PackOptions, pack
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.engine

BUILDS = (("gguf", "F16"), ("onnx", "fp32"), ("onnx", "int8"))
FILES = ("model.gguf", "model.onnx", "model.onnx.data", "genai_config.json", "manifest.json")

GOLDEN: dict[str, dict[str, str]] = {
    "deepseek2": {
        "gguf-F16/model.gguf":
            "e365a4a6c0223d4010b7e2a608b55a25cf7e23ce1ebf13be88ea666ac028b574",
        "gguf-F16/manifest.json":
            "f09f06240be9ba3e886cc07489d3cd0a2378285767042e275e51710481003d9c",
        "onnx-fp32/model.onnx":
            "48f924c3b8f1ba22a2016801a4eb9fcf8c06ca6312734bf2e0c179d9ac54ccf9",
        "onnx-fp32/model.onnx.data":
            "c77f72b53cfd8f553212cef56ff2c7fe40108e7623ee974e012b8eb808718bb7",
        "onnx-fp32/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-fp32/manifest.json":
            "2326fe4c627fdc284e1144de21f717cf59a56de23b6be891465daf522a38656a",
        "onnx-int8/model.onnx":
            "6985953bc19636f3716fe868caba3c9f44d16c644637d33ce89a52fa21afe841",
        "onnx-int8/model.onnx.data":
            "ff92495949811d766303a794a70fe9c145c31722a849ec39695edb6b535fc5df",
        "onnx-int8/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-int8/manifest.json":
            "bec1569c03414a9371419d7554615f1f2095b4fcda633f1dc7d7fb9e694a89a4",
    },
    "mixtral": {
        "gguf-F16/model.gguf":
            "d4e2a496ef825256127f59639fb8cda03849bd7b5415f297af86c806f095584a",
        "gguf-F16/manifest.json":
            "beaf9cbb08d915ae2be6cf7eeacc32d6aa2f01544edee477212938ca25fb1b5d",
        "onnx-fp32/model.onnx":
            "cec7efe258b682acb810a4b4d2bdbd860a061fe9ba8286e99a271eea1833ab81",
        "onnx-fp32/model.onnx.data":
            "f7d1c3d7c39fda010f7e641c89932bb13dafbb9b0e62538bbe97622e8e4f98cf",
        "onnx-fp32/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-fp32/manifest.json":
            "1b4fc1c2b1b2b1424c72afcb078ed1f8a2527c57169bed5256f53d00d7a4fb74",
        "onnx-int8/model.onnx":
            "638bcb222dd7a9b19f3b98bc95f8c1f911de0e6b2d150301afd416df31008525",
        "onnx-int8/model.onnx.data":
            "a167e034fd1a665c55d5f9326c49d5ff62318aae7ead60c7e44c4a662e863642",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "8b732a01bd380fa62408f3d689d7994827ff718e9f1c97aa75ee352b74b6d375",
    },
    "olmoe": {
        "gguf-F16/model.gguf":
            "cd94d3889d09d98c0dcee09bda829125658a144827090fda1380531636dbfa6d",
        "gguf-F16/manifest.json":
            "fd9f602c34141c861e6100bdbb7c175c08a15bac637eb9137c27e6d962e49048",
        "onnx-fp32/model.onnx":
            "9e4f9d7df670a077acf23e4f8a0e2d2beb8adfe74f26b73f8524aae0a195244a",
        "onnx-fp32/model.onnx.data":
            "e3dd32ef6cafe01c546b7f5c60f1a522061825904a0ade37ed4e38d3123cbf5c",
        "onnx-fp32/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-fp32/manifest.json":
            "e9c9dcf829c33cbeb7e612ccc4d063bde7c156ffc7a98753aa19cd27a35dcae8",
        "onnx-int8/model.onnx":
            "5993b0c9e61b521ca4f141ea61805f7400e33932e9ef0c8a45654287bf6decc5",
        "onnx-int8/model.onnx.data":
            "4b215c23a3ddb495d0e015adfaf35d3ae7633c09285d261efe622de59369bfd8",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "d9c36221609eecb671b1596137124cf22b7697f6fc4aebaf2eb6a5ca3888cde6",
    },
    "qwen2moe": {
        "gguf-F16/model.gguf":
            "b65e9317b85ec10e58608f93f754be0adf6abdb4607caf8fe4cdacaf7c687f28",
        "gguf-F16/manifest.json":
            "3ecfa0a8aa6aa5d3a58f2e433928413f84446a236e7d1744c3ce8c891f63aa91",
        "onnx-fp32/model.onnx":
            "8c74e177211448fd022ecd1d5cc9d704b38eeeabbf9c8221684f98ebb7e0ce2c",
        "onnx-fp32/model.onnx.data":
            "a9cb4282d0ea9ef24e5dfc2bf09a408076f9b9bfd2ea6a67daa9c65284749412",
        "onnx-fp32/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-fp32/manifest.json":
            "cb3aac2cd513635a3b5b4701052e20fbcace85dc7995af0ef10b466748a639c9",
        "onnx-int8/model.onnx":
            "89c83e3f384272bfaf7407c4599fbb41c383a439131839a0c2b4b54c4df012fd",
        "onnx-int8/model.onnx.data":
            "576f78f673b16e60507c553e8a3cf474f2cf4980dd847658cf857999f4e049ff",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "3544654fbaed6296c6ea1447525408ef3d55f4b45f10ad579b01ea933f63b6f6",
    },
    "qwen3moe": {
        "gguf-F16/model.gguf":
            "b9c8fcae8098a56bd9d258d8a3d9ba7f21f0d040e6aff06adb67aed2b74a8017",
        "gguf-F16/manifest.json":
            "205d77e7d8e5b20952f860850f9239b570b2a4c4842d456e9d0ab747f8e2639f",
        "onnx-fp32/model.onnx":
            "60f495a4e9f97c7a38244cebe11da3f0fbd903b8b04a109785c2b7f926b86fb7",
        "onnx-fp32/model.onnx.data":
            "d1f76a89d83f38fdb2101cbdb8890ca15f9a2a5895ff9a24853e24a9d58b40bd",
        "onnx-fp32/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-fp32/manifest.json":
            "fef53d688887b521372599d725eb2af1bb21d5adfc1430c977e49e14bd64fbc5",
        "onnx-int8/model.onnx":
            "c1688fa515895536ce60e65c132873c67ea1ad6812f32bb2c0d15aefb2a98a72",
        "onnx-int8/model.onnx.data":
            "4d1c70b9fad110eebbf4c738a5576fa292c69833b714e1acaec6aefcb6efb0b3",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "16a023496a69a7f5c2d74dfe016cb447691fda5b4fed885bcac3afe54b67ef5f",
    },
}


def _manifest_digest(path: Path) -> str:
    """The manifest without what names this machine (the checkpoint's folder, and the README
    that quotes it) and without what other modules own (the profile snapshot, the planner's
    estimates, the version string)."""
    m = json.loads(path.read_text(encoding="utf-8"))
    m["source"]["ref"] = "<checkpoint>"
    m["files"].pop("README.md")
    for key in ("profile", "plan", "created_by"):
        m.pop(key)
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()


def pack_hashes(family: str, root: Path) -> dict[str, str]:
    """sha256 of every build file of `family`'s checkpoint packed each way in `BUILDS`."""
    src = write_checkpoint(family, root / family)  # its folder name is the GGUF's general.name
    out: dict[str, str] = {}
    for fmt, quant in BUILDS:
        bundle = root / f"{family}-{fmt}-{quant}"
        pack(PackOptions(src=str(src), out_dir=bundle, format=fmt, quant=quant,
                         reference=False))  # fmt: skip
        for name in FILES:
            path = bundle / name
            if path.is_file():
                digest = (_manifest_digest(path) if name == "manifest.json"
                          else hashlib.sha256(path.read_bytes()).hexdigest())  # fmt: skip
                out[f"{fmt}-{quant}/{name}"] = digest
    return out


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_pack_bytes_are_the_recorded_ones(family, tmp_path):
    got = pack_hashes(family, tmp_path)
    assert got == GOLDEN[family]


if __name__ == "__main__":  # print the table to paste into GOLDEN
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = {f: pack_hashes(f, Path(tmp)) for f in sorted(CONFIGS)}
    json.dump(table, sys.stdout, indent=4)
