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
# Families whose ONNX export refuses (see each family's onnx_missing): GGUF only.
GGUF_ONLY = ("deepseek4",)
ONNX_ONLY = ("phimoe",)  # llama.cpp's graph would run another model: no GGUF is written
FILES = ("model.gguf", "model.onnx", "model.onnx.data", "genai_config.json", "manifest.json")

GOLDEN: dict[str, dict[str, str]] = {
    "deepseek2": {
        "gguf-F16/model.gguf":
            "e365a4a6c0223d4010b7e2a608b55a25cf7e23ce1ebf13be88ea666ac028b574",
        "gguf-F16/manifest.json":
            "f09f06240be9ba3e886cc07489d3cd0a2378285767042e275e51710481003d9c",
        "onnx-fp32/model.onnx":
            "39fa14632de213a22138ead8a45be5e154a1e4aa05e0d7f72f7e65f533549410",
        "onnx-fp32/model.onnx.data":
            "c77f72b53cfd8f553212cef56ff2c7fe40108e7623ee974e012b8eb808718bb7",
        "onnx-fp32/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-fp32/manifest.json":
            "688f5b22fb32152b632acb85a6cb4bcdc0df7bc42727fdaaea6b2fe5b7ecc18e",
        "onnx-int8/model.onnx":
            "d27badfb16d97b09f9dacd44735da7eaad3c0e3d6cb61374663e26c3162232bb",
        "onnx-int8/model.onnx.data":
            "2b7f35ed0e74cf1fda3fe226fa342bac562c0d30297053c102bfc0b0c289ab65",
        "onnx-int8/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-int8/manifest.json":
            "c29b2e61f0ea7ca172fe167fc52b08a7ad174a1b9101149d4bb1b43ad2cf4873",
    },
    "deepseek3": {
        "gguf-F16/model.gguf":
            "b84d07ed7a50e7e39903f0db179e14f0bd6d7998a69195e30ec0cdcb045ed49e",
        "gguf-F16/manifest.json":
            "34c4cdeb4d6ba0014cecff2f2d3d5d0dd4c572288ed87235a9978034a42dffe1",
        "onnx-fp32/model.onnx":
            "a3bca5dd07c7f2425427c015ade0c99735ce1b67417cafa66378f1d3d406cc84",
        "onnx-fp32/model.onnx.data":
            "6ee8073bf89cbf2beeb55848a0abcf9fddc139baa73b16c44db00a223a63ac7d",
        "onnx-fp32/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-fp32/manifest.json":
            "9d8d38d76be76bef50e4101fcdd460ca668cf0333145a733623239a3badff033",
        "onnx-int8/model.onnx":
            "f26675a31104aaeba75822792dc830dc788bcfcc563455829fe43314fb14b585",
        "onnx-int8/model.onnx.data":
            "8371c68d7a9ca9ffaff7a5a1e6447956e6346dc42827dbe23b4fdc1bad74a42c",
        "onnx-int8/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-int8/manifest.json":
            "e224f839474562d854f475d144f62f14ae50f6425ceffbb0e672c4fc06a5fbfc",
    },
    "deepseek4": {
        "gguf-F16/model.gguf":
            "d7012e8cb7fa27612cbf0d46cb7338b4aca90df310f384b496605a4ecf0d860f",
        "gguf-F16/manifest.json":
            "abbc743c03ec0936ba5241a037744ae7219e7c4cee87efc193d19b7501caf706",
    },
    "ernie45moe": {
        "gguf-F16/model.gguf":
            "cc486058e8d0f2cce8d235fc60f9f7972d03d0ff156812dac09d2075410332aa",
        "gguf-F16/manifest.json":
            "28effeefbbd632b052832dbf04a8cd0af958d091cdd05dac94b5de86c02ca7b2",
        "onnx-fp32/model.onnx":
            "4de7ef2706794444329a9875d2b46dc3c2e45acfad47aa0a7b2db8cc1940f508",
        "onnx-fp32/model.onnx.data":
            "f13ea50b9c8fd096b6ed1b8744991c396eeaaece959d5c9d41c780c62ef6a8d4",
        "onnx-fp32/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-fp32/manifest.json":
            "c0b42c424d816d7c8424d6b4508970fc6cbb57b8e4807c9362af9d7766bf0611",
        "onnx-int8/model.onnx":
            "0a606dbfa2f5a29cbedfb405dcc2c500b8849c4a42921760362219cc82b88fc3",
        "onnx-int8/model.onnx.data":
            "4eb2921e07b170c7c4de18101f6805e8c57d66d4e978a14253128f4d15639c5a",
        "onnx-int8/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-int8/manifest.json":
            "b77e8a58af2d8fceaf24a1b01a63f0721201bd58af342c3dec619b84d9cd9e67",
    },
    "glm4moe": {
        "gguf-F16/model.gguf":
            "fa352d1de6b2598d2771a0519269cc45e4b6b175d48de006e7e961dd289ffb59",
        "gguf-F16/manifest.json":
            "5c1d8a1e84b455517cc2861fbc884dd36b5d97a9a031ee325ccbdeb7dbfbc674",
        "onnx-fp32/model.onnx":
            "7b69a3df2ea514ef9151ed40cdc3af5c9b1f867f68203204ddbab969ab2f1b34",
        "onnx-fp32/model.onnx.data":
            "9c49a8155c94e4f3e4429fab6697d7137b4cdb33a1fb7774d174dd9c089146e6",
        "onnx-fp32/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-fp32/manifest.json":
            "b30ca1ddc508df4b27fd8b72a709f736cad641e90910f45bc4301655512b9a8c",
        "onnx-int8/model.onnx":
            "c5c51010870772e1301d1a951f2d6d8f91e991a1d9ddb81887c81970dc013014",
        "onnx-int8/model.onnx.data":
            "6a929857f864b2166a671db3a63a62582157c430a45f8d9f131358c34c9a20c0",
        "onnx-int8/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-int8/manifest.json":
            "7c68b9541685f045fedc94e75d40f33112626e629827a511217cece84c38e2c0",
    },
    "granitehybrid": {
        "gguf-F16/model.gguf":
            "8e539ac78f9428376a1524ebf3584340495370586b03c5c9e5c3d487179ec8ab",
        "gguf-F16/manifest.json":
            "8587a303bd9107ae18264948b9bcd2d2188beb013f1141cb3fd4bc571118735f",
        "onnx-fp32/model.onnx":
            "b3a0906a7c43924fc3a5904e397f5c57b9447928aed54a62d2c5fdd378f47291",
        "onnx-fp32/model.onnx.data":
            "cee2cde2ab9d0c2ca7022e3a19a3e480fa6f0ae98a95b435586a5863616b5114",
        "onnx-fp32/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-fp32/manifest.json":
            "369b4584f61d63489643b8728215c197b1f53f1097d0e979c9bc6828d33f1025",
        "onnx-int8/model.onnx":
            "c9eea887f380d4c8b3cc494718352efaf2dfedde17f677bf76133405d8665801",
        "onnx-int8/model.onnx.data":
            "f48b28fa248c525fd63985a4f8e6a5022b89ac77c3cb5dc0a824e8a4d6dd0a5e",
        "onnx-int8/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-int8/manifest.json":
            "edacf018e5693f3ff966418b082862047c081823d894a1acf7c4a9422f2cb5f4",
    },
    "lfm2moe": {
        "gguf-F16/model.gguf":
            "aa67b7bf7841f0769c9d201947f2e059fb503408e4ffd231dbad3b75ce3c6f9e",
        "gguf-F16/manifest.json":
            "54ba6a5c83154740ac42f790116c7ca25576d4a0e0644b779096aee4fafdd8e3",
        "onnx-fp32/model.onnx":
            "1a3a18edfe81cae5fcfd14819e8333ac91a144af92d97cf43d97425ede971cb8",
        "onnx-fp32/model.onnx.data":
            "c46732d8f11eeeaca2b2a1458cb000e4de0ad0f2fcedb92b9b3b22b736cc78a5",
        "onnx-fp32/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-fp32/manifest.json":
            "a1dc91b3bf30720aa8636cec1753f910cdeedb78e39dce27953863a96efe2365",
        "onnx-int8/model.onnx":
            "e0f79e95798b119abade8f51855c00ca7fc24f8374b4db6d0b1ac4db44381d79",
        "onnx-int8/model.onnx.data":
            "3b83665a8cf61e47001042d15bf0e7c92b6cf054a25b4e6b3e537b68c55756e9",
        "onnx-int8/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-int8/manifest.json":
            "72ed22174e5faaff218dc50c3dbdff43417f095aca46013a48f5ca1a04b17490",
    },
    "mimo2": {
        "gguf-F16/model.gguf":
            "8a520e00238c3cd2a7e3b8f075f6f46cc4bd6399e8a51baa1102c3fc42fdb4bd",
        "gguf-F16/manifest.json":
            "8cc15d7ae0044253d5d190b9e57d73168d8b45906b3d4e882b176be929e2d275",
        "onnx-fp32/model.onnx":
            "f082dad899671030279992ea9bc5918466ce4aa8e699466f6c94a25999c8daad",
        "onnx-fp32/model.onnx.data":
            "167790319118e3c305e76071c241d8084485e7051b6a9db56c3866a5cfb8ee7b",
        "onnx-fp32/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-fp32/manifest.json":
            "1984c146dd6cdaaf56dd57fa50c768e419e80bf04f3a295d4ad4e8988dd0806f",
        "onnx-int8/model.onnx":
            "3cf92481274abf5d5c0200e76b00069ffecd7d36c1c58ad63a1c00d936329ee0",
        "onnx-int8/model.onnx.data":
            "40bdb57b23f8309d2542d0cdc17ad00bab39d354e653a7f49304afc8cce8d438",
        "onnx-int8/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-int8/manifest.json":
            "3ef6adc2de792fb19164328648e0296ce9c2ded1e9aa6cc494097adcb9e97c62",
    },
    "llama4": {
        "gguf-F16/model.gguf":
            "38464187d1487058e8fc6637cb0f8da37b0fc5f2a700888c75f5a1f003542971",
        "gguf-F16/manifest.json":
            "19b1ad6cc068984719892abbd1eb261686559fbd1a7cedd1788d210735203dc8",
        "onnx-fp32/model.onnx":
            "c8e5a7f2b3c952713eed4efdee84ec6c24abe55cdd710e9b430772fe305b48c0",
        "onnx-fp32/model.onnx.data":
            "48ac39c194c9ed4f5e2d6ef320c1435ca10cf672c1ebd718be8451c8b24d40e9",
        "onnx-fp32/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-fp32/manifest.json":
            "f81dff8157493f4e954b9e7ce591b975c60cb151ec691351564d67c1ccdb16b8",
        "onnx-int8/model.onnx":
            "2b46e7e02d455b96287574a5412e97e86aafb1e48a9e31832efcad83ed98896a",
        "onnx-int8/model.onnx.data":
            "9ba22008a4a787b1cc52ecf5e0b41910881ff411c85e6f275c43532a63e883ed",
        "onnx-int8/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-int8/manifest.json":
            "3a8b9f611b5f29ef04f0ca0b4896c8622c40f12e564e3e94167aafcf16e8af5a",
    },
    "mixtral": {
        "gguf-F16/model.gguf":
            "d4e2a496ef825256127f59639fb8cda03849bd7b5415f297af86c806f095584a",
        "gguf-F16/manifest.json":
            "beaf9cbb08d915ae2be6cf7eeacc32d6aa2f01544edee477212938ca25fb1b5d",
        "onnx-fp32/model.onnx":
            "3f350a1d3619a6d6aca5944634120914dc999fc4c377dba349cb0461b54b790f",
        "onnx-fp32/model.onnx.data":
            "f7d1c3d7c39fda010f7e641c89932bb13dafbb9b0e62538bbe97622e8e4f98cf",
        "onnx-fp32/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-fp32/manifest.json":
            "c6f7107776f43b26f3b6351afe0e0deb0690ee656e25b38edec895ae19619ef5",
        "onnx-int8/model.onnx":
            "bd9b936db220e53ba7a3b75c72861b30ac19b709a315f8757c4346e5694cfef8",
        "onnx-int8/model.onnx.data":
            "444b92dc6ee264cdec12655cabe5d781e71b8367bb345518b30cc7d3f689c8af",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "9902eff6812916c8193834404292c1a8ea4600edc1334ba9dbd16b22c077dfca",
    },
    "olmoe": {
        "gguf-F16/model.gguf":
            "cd94d3889d09d98c0dcee09bda829125658a144827090fda1380531636dbfa6d",
        "gguf-F16/manifest.json":
            "fd9f602c34141c861e6100bdbb7c175c08a15bac637eb9137c27e6d962e49048",
        "onnx-fp32/model.onnx":
            "b45d544bd3ae9fe77f183fe8b747edf43defa8de8fee9a6862f7f010fe5ceb67",
        "onnx-fp32/model.onnx.data":
            "e3dd32ef6cafe01c546b7f5c60f1a522061825904a0ade37ed4e38d3123cbf5c",
        "onnx-fp32/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-fp32/manifest.json":
            "bb29076dbdd2f3e9d4b7cd3c7b102f70e276710e7b067418b07b85ca43294cf7",
        "onnx-int8/model.onnx":
            "c75637a7876d04396d555028c762cf744193471c6541207c039c0346a8e3b889",
        "onnx-int8/model.onnx.data":
            "08127851d0fde5145fe741f085626f12042d979c17e8fa3e3ce2307a387ddde5",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "22f31c93518d5555b67cc66908748667f56110623e537dff974aec4e6244446c",
    },
    "qwen35moe": {
        "gguf-F16/model.gguf":
            "a86b56a510e3bbb8eeed47ee320e42243d8520096d4f4472258e13096eb2c34b",
        "gguf-F16/manifest.json":
            "06be3912b0892c31f1e45bc94aff361e55c129934dac6fec32b8d89f5fe26b22",
        "onnx-fp32/model.onnx":
            "34cd555b6e203da975058fb31823554951ebf833de6341b3780edb9f6b593544",
        "onnx-fp32/model.onnx.data":
            "4c2d6594f47cb7e9fed772d60560a603d97ac9f3788d1e304385b9987f4baadc",
        "onnx-fp32/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-fp32/manifest.json":
            "9e36f1e92926364bfd9b876e43e0da1b39b484bd67a0978f3945faa95de7354c",
        "onnx-int8/model.onnx":
            "3ad97e0e80e1352c36bab053145c50c5b9050cd7918ffb5fcb0fef10b5bc1a44",
        "onnx-int8/model.onnx.data":
            "995fa20616a2d0f792d84e24ccb70cac50704499d1ad98a4e93b3bebb2fbe755",
        "onnx-int8/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-int8/manifest.json":
            "a8eb5466825bbaadacf230b809ced533765d66c4bb784d74aa75007fa435ba61",
    },
    "phimoe": {
        "onnx-fp32/model.onnx":
            "283f2897d8f29f631227aaed34a6938f716c67a5c3c95742eaf536e4e9fdbebb",
        "onnx-fp32/model.onnx.data":
            "700c913876baaf14effeb24de1c4d77dd11fd6d182f708f13d3a795ffdda19c4",
        "onnx-fp32/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-fp32/manifest.json":
            "0fe84d325f745e7a5b17e22c13560c849b06502b1fa1301ec22fd05e5c53ff7a",
        "onnx-int8/model.onnx":
            "304f9b17ccb7b1267ef0991311974dcac4a4c4ec08b0bb76c18fa4663362c520",
        "onnx-int8/model.onnx.data":
            "1a8c1a43d25ff245e479f106f9b848a757fb2d3f8a889a4d28ccc6cdb07e4528",
        "onnx-int8/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-int8/manifest.json":
            "b6dad3ae3e78c0b64b10cafa96a53704a64e4a2be54becff46de4632a573c947",
    },
    "qwen3next": {
        "gguf-F16/model.gguf":
            "8cfb017e0c9e117da0045560c58d5a7fee2031a4127ee75caf3557c6208a46e1",
        "gguf-F16/manifest.json":
            "0a31a89a15fcdea31ec21a5181fcd44b70128911f9b9c6eb8f89855d910b3984",
        "onnx-fp32/model.onnx":
            "61905f73da2141242e1321c65909c4516e4c70f8d92704aa49a68d9547ffb202",
        "onnx-fp32/model.onnx.data":
            "c69cca43cb63c4773aff4b0932cad46d802cc288c2d8e87d7b6fe63ac79091de",
        "onnx-fp32/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-fp32/manifest.json":
            "ed815c980024d09f58dff5013d1da1f2867c77d0314c8a6330e72dfafcbeafc8",
        "onnx-int8/model.onnx":
            "ff795eca4331e5d7f7e79d58fda8a0e4ee96a1a7a220a17a6743088414002076",
        "onnx-int8/model.onnx.data":
            "dd692e580934a30a043d918f90e27288c70098be8f1a9d6f6ab9ed6b9428d4a2",
        "onnx-int8/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-int8/manifest.json":
            "7b23d9197d3a13b43caca428423d33d1046cf981031e423e28bb5e667ec10822",
    },
    "qwen2moe": {
        "gguf-F16/model.gguf":
            "b65e9317b85ec10e58608f93f754be0adf6abdb4607caf8fe4cdacaf7c687f28",
        "gguf-F16/manifest.json":
            "3ecfa0a8aa6aa5d3a58f2e433928413f84446a236e7d1744c3ce8c891f63aa91",
        "onnx-fp32/model.onnx":
            "d6b2e879e9c01bcf8854486b8685a9ad98175070270f9eeb4ebf7453e7b11db3",
        "onnx-fp32/model.onnx.data":
            "a9cb4282d0ea9ef24e5dfc2bf09a408076f9b9bfd2ea6a67daa9c65284749412",
        "onnx-fp32/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-fp32/manifest.json":
            "cb2d569b06e36be59a3f52d7f774729eea4494f18e6f0b54e068d756cd169c57",
        "onnx-int8/model.onnx":
            "fe9ecb7ccc792cd96097ab0aab9ae4ee1c629a3917516ce3a4f8cdf7ab947ba5",
        "onnx-int8/model.onnx.data":
            "59cc3ef281f3edaf646b242d2a024779eb12d02f95449400e1e0688d24af5e34",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "2466a99f94e589992daadac72153a5555103aa67d462797c201c36e85c22b7f5",
    },
    "qwen3moe": {
        "gguf-F16/model.gguf":
            "b9c8fcae8098a56bd9d258d8a3d9ba7f21f0d040e6aff06adb67aed2b74a8017",
        "gguf-F16/manifest.json":
            "205d77e7d8e5b20952f860850f9239b570b2a4c4842d456e9d0ab747f8e2639f",
        "onnx-fp32/model.onnx":
            "522be7308005851e3a34a8cde0f4bbc5013a50114f136b3a3711d45257e854a0",
        "onnx-fp32/model.onnx.data":
            "d1f76a89d83f38fdb2101cbdb8890ca15f9a2a5895ff9a24853e24a9d58b40bd",
        "onnx-fp32/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-fp32/manifest.json":
            "afaaf2fb923fbd0644b8b9b2655bb36b19f120be1c9e11deb56bf3224c746d8a",
        "onnx-int8/model.onnx":
            "55863cbc786dcb7081fcf629ec25e34ea87fd0487bfe140c45d5573afeafe55d",
        "onnx-int8/model.onnx.data":
            "95bdc5eb6d8126757ac1ee68da18b7675acb730084d0ff0395845a766f5a56e0",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "059b232a70683e7ae6fcfd325d49c9321bc136b88ab8c66e329fe398e5fc9fd1",
    },
    "gptoss": {
        "gguf-F16/model.gguf":
            "cefc93f822e0f2569839fda0f9189ecf9115eabfc142e695e0b874b817bba62d",
        "gguf-F16/manifest.json":
            "053ab4dc57bfe6fb950950f1a892cba13b6cde8c660bd44ed297216a04a6d5cd",
        "onnx-fp32/model.onnx":
            "770cab8a2ac96709bac5c59b826eafcca20c3c220f28189e5bcff327b917b091",
        "onnx-fp32/model.onnx.data":
            "874e57db2378d958268a300e79243c05a92f3b81db56694dd02bccfcead8bc89",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "c7356ae646fb4eaddb260c27730e1d0656e24b6bca47b962eaac778d9aa4b828",
        "onnx-int8/model.onnx":
            "fa076accc035f530b31cb032efe38df9a3b7c296187d3f6171c69284ab88fbe5",
        "onnx-int8/model.onnx.data":
            "a5aaed5596bc4d02a0143d8c000d75a3ea60cf467bb72f8bd697cbbe89cdd34e",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "c6cac99dec55d30d4f16e6af95cea76c4062196ac36cc7dd53af080d80ec9cfe",
    },
    "gptoss_mxfp4": {
        "gguf-F16/model.gguf":
            "c4509834464af0c559d95c5ea405b08b0ad0b0b80d839af72e603458be6f4e01",
        "gguf-F16/manifest.json":
            "78aa45f57cdfa7455c357e485e8991ccabd7815d3099e193c336acd6a1d10099",
        "onnx-fp32/model.onnx":
            "770cab8a2ac96709bac5c59b826eafcca20c3c220f28189e5bcff327b917b091",
        "onnx-fp32/model.onnx.data":
            "9bb0a50da47d6c1ac5e88fdf2e05847776375294fd5981610be185ab6b91740c",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "4582ebe67366e6f66f17f70fd92a8d9e956e69781ea137f6b3907cf3e370c1c4",
        "onnx-int8/model.onnx":
            "fa076accc035f530b31cb032efe38df9a3b7c296187d3f6171c69284ab88fbe5",
        "onnx-int8/model.onnx.data":
            "776c0163fe9189962b3585944afd8f1140752b51e6ccf202520bde9914845cec",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "e7572dfbfb777e1c409a272172e6f88d7f715447ab65fce8a38e7e93013db811",
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
    builds = BUILDS[:1] if family in GGUF_ONLY else BUILDS[1:] if family in ONNX_ONLY else BUILDS
    for fmt, quant in builds:
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
