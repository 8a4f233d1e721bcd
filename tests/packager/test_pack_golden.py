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
            "c98cb93472dedcf412429af533ad6e1637bf618395f4298245111f5a92b00cb2",
        "onnx-fp32/model.onnx.data":
            "c77f72b53cfd8f553212cef56ff2c7fe40108e7623ee974e012b8eb808718bb7",
        "onnx-fp32/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-fp32/manifest.json":
            "285928d4d6c121fd4ea194aa1931799af67a392c770824dac24f9601ff8a48dd",
        "onnx-int8/model.onnx":
            "1a341b9041d1622cb8c8e6316ff586da94b9181f2b514ef265cd6294fe2dd94f",
        "onnx-int8/model.onnx.data":
            "af986bb46b00d43f40139f6a147235e0456a4418d07b2af2a56d4edcd3d775f3",
        "onnx-int8/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-int8/manifest.json":
            "7b0b8d887e987663160247e6a299d787623051e2d85b345e9cb994e862b480b1",
    },
    "deepseek3": {
        "gguf-F16/model.gguf":
            "b84d07ed7a50e7e39903f0db179e14f0bd6d7998a69195e30ec0cdcb045ed49e",
        "gguf-F16/manifest.json":
            "34c4cdeb4d6ba0014cecff2f2d3d5d0dd4c572288ed87235a9978034a42dffe1",
        "onnx-fp32/model.onnx":
            "4e3d62b61e94d4e9632e1e5bbf0d68b7f422ba062c2b177c2af59cd1ece5571e",
        "onnx-fp32/model.onnx.data":
            "6ee8073bf89cbf2beeb55848a0abcf9fddc139baa73b16c44db00a223a63ac7d",
        "onnx-fp32/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-fp32/manifest.json":
            "0310215ebcbd37caca37c270f10f0da889c50362bb5f73d84049f90300cb6457",
        "onnx-int8/model.onnx":
            "2bd6de2df8f5fd04c882890f503c196397c3cdefc75c373cddb2d6060952c420",
        "onnx-int8/model.onnx.data":
            "c6de9a883bac38ad37508ddb9ce01425cc4bfb5534dbc33dc9d8cc97af1fe6a5",
        "onnx-int8/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-int8/manifest.json":
            "b3cc59e9eee6a92477d910df83417608c91feea837a9313ac5a2ab27a93cf29a",
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
            "2cbfe8708847010866d36428888727e61aaff7d62becc7c7bb76d3a55925f02d",
        "onnx-fp32/model.onnx.data":
            "f13ea50b9c8fd096b6ed1b8744991c396eeaaece959d5c9d41c780c62ef6a8d4",
        "onnx-fp32/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-fp32/manifest.json":
            "235cf1c3a044163c9a7449366fd55aecc3de0e20897341e45b133bbe0e454add",
        "onnx-int8/model.onnx":
            "51b441ad1be8de067570f7fd5d02f340fd64ff226dbb5107c16d4f47a6e8fc06",
        "onnx-int8/model.onnx.data":
            "35a617d8842a4393ae705297524402df57b748cac70505217213786d8601754d",
        "onnx-int8/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-int8/manifest.json":
            "cb1262c6224ba881b7550145ac29ded09da6e9c4319c1f555cc9b0fefcff4edf",
    },
    "glm4moe": {
        "gguf-F16/model.gguf":
            "fa352d1de6b2598d2771a0519269cc45e4b6b175d48de006e7e961dd289ffb59",
        "gguf-F16/manifest.json":
            "5c1d8a1e84b455517cc2861fbc884dd36b5d97a9a031ee325ccbdeb7dbfbc674",
        "onnx-fp32/model.onnx":
            "483fe6f16e70be60056ececa37182bd0f5fc22e8150ad49f45fa5da45dbe9a76",
        "onnx-fp32/model.onnx.data":
            "9c49a8155c94e4f3e4429fab6697d7137b4cdb33a1fb7774d174dd9c089146e6",
        "onnx-fp32/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-fp32/manifest.json":
            "a96f131bf4f899fab85cfd9e625994287c8e238a332790aa39806bed93709dea",
        "onnx-int8/model.onnx":
            "173a3d0bb7026802d75aa0156891e310dbc350fffa996bdc5c518b167172c4fd",
        "onnx-int8/model.onnx.data":
            "27faf8f27d2e27ef772f098ac49399683c3521ed684ab7a9e9b56ec28f3ca876",
        "onnx-int8/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-int8/manifest.json":
            "d8c8d7b61ab9199e1247c55210db147c6877a4ff259f95019cfac7d859026e17",
    },
    "gptoss": {
        "gguf-F16/model.gguf":
            "cefc93f822e0f2569839fda0f9189ecf9115eabfc142e695e0b874b817bba62d",
        "gguf-F16/manifest.json":
            "053ab4dc57bfe6fb950950f1a892cba13b6cde8c660bd44ed297216a04a6d5cd",
        "onnx-fp32/model.onnx":
            "9e2d694f768f23212d34c9aef0057f9b745d88a187e33c6b9ae3418b008675ef",
        "onnx-fp32/model.onnx.data":
            "874e57db2378d958268a300e79243c05a92f3b81db56694dd02bccfcead8bc89",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "bcdc84813eb8c3d26671125c815382a17115686475f8c617d86ca71a08de1b28",
        "onnx-int8/model.onnx":
            "fc6ecbfc5c31db6a9e921e3271fafd81d065423fc192666aaf6848a8c452289d",
        "onnx-int8/model.onnx.data":
            "491da47a404aab215d6cf7c7d787e76fe400b60193d7716e35993f8f6caaa26d",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "d8fbb946251b6ec6c9efb050def73419606e56643dde6d5b84d2c0bd8794ca3c",
    },
    "gptoss_mxfp4": {
        "gguf-F16/model.gguf":
            "c4509834464af0c559d95c5ea405b08b0ad0b0b80d839af72e603458be6f4e01",
        "gguf-F16/manifest.json":
            "78aa45f57cdfa7455c357e485e8991ccabd7815d3099e193c336acd6a1d10099",
        "onnx-fp32/model.onnx":
            "9e2d694f768f23212d34c9aef0057f9b745d88a187e33c6b9ae3418b008675ef",
        "onnx-fp32/model.onnx.data":
            "9bb0a50da47d6c1ac5e88fdf2e05847776375294fd5981610be185ab6b91740c",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "9c7921cf4af3945dfcde19379cd8131b3ab21b461fccc64c24d168e4475a54a9",
        "onnx-int8/model.onnx":
            "fc6ecbfc5c31db6a9e921e3271fafd81d065423fc192666aaf6848a8c452289d",
        "onnx-int8/model.onnx.data":
            "4f20bcbed5738cc0aacc7ac88c7835956dc92c3b3e3b420bf64cef533da8e9c6",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "47714eb3261ab425abbd0cba5ebe0e1643d1f50df63128aaae5b7f2096af851d",
    },
    "granitehybrid": {
        "gguf-F16/model.gguf":
            "8e539ac78f9428376a1524ebf3584340495370586b03c5c9e5c3d487179ec8ab",
        "gguf-F16/manifest.json":
            "8587a303bd9107ae18264948b9bcd2d2188beb013f1141cb3fd4bc571118735f",
        "onnx-fp32/model.onnx":
            "8b4e98dda92f8b3a1e6f16c81bd9b4290bfe1a0c62bc2016b83598c201a59cc8",
        "onnx-fp32/model.onnx.data":
            "cee2cde2ab9d0c2ca7022e3a19a3e480fa6f0ae98a95b435586a5863616b5114",
        "onnx-fp32/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-fp32/manifest.json":
            "d050bb413f73c0876b0eff36e0f817d63ce1965d1e72d30828ecadb6cff03f24",
        "onnx-int8/model.onnx":
            "0824ad002907279b1b0b3134e3dd76c6e2b0c619cf18237ebfa814a59ca7524f",
        "onnx-int8/model.onnx.data":
            "4bc916c7d9a30dc14e32757d207e0b663a79f7c2643cf8d8954458a4d95a3d44",
        "onnx-int8/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-int8/manifest.json":
            "dc0882d7062d1abfc5afd9dc92c0a6f5019590a4822d61ae37968a6b84865268",
    },
    "lfm2moe": {
        "gguf-F16/model.gguf":
            "aa67b7bf7841f0769c9d201947f2e059fb503408e4ffd231dbad3b75ce3c6f9e",
        "gguf-F16/manifest.json":
            "54ba6a5c83154740ac42f790116c7ca25576d4a0e0644b779096aee4fafdd8e3",
        "onnx-fp32/model.onnx":
            "0278582c0c55f414987bcdb92a85652dd06565fe5a03a25886872e7794c2dee9",
        "onnx-fp32/model.onnx.data":
            "c46732d8f11eeeaca2b2a1458cb000e4de0ad0f2fcedb92b9b3b22b736cc78a5",
        "onnx-fp32/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-fp32/manifest.json":
            "29600d61d5d5672bd471a4bdd23c6dcde38ae40d24c4b86236b284502c27a388",
        "onnx-int8/model.onnx":
            "48f17c841ff243643895c926ab1fc325d52aeb67a6a7422ae19d6c51d4ea2ef8",
        "onnx-int8/model.onnx.data":
            "691f59b8b25095f01bfb9f141588cc2c70064eb16d29e7152a14347b8c3827c1",
        "onnx-int8/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-int8/manifest.json":
            "7377365c8cb648525b6827e6aac56571053ab85f2da7d2295ca9f8bebf2393ec",
    },
    "llama4": {
        "gguf-F16/model.gguf":
            "38464187d1487058e8fc6637cb0f8da37b0fc5f2a700888c75f5a1f003542971",
        "gguf-F16/manifest.json":
            "19b1ad6cc068984719892abbd1eb261686559fbd1a7cedd1788d210735203dc8",
        "onnx-fp32/model.onnx":
            "e04f4046220e97c0049cb509901c8c3c49ef67e08c835fd1456e0c0c66fbc836",
        "onnx-fp32/model.onnx.data":
            "48ac39c194c9ed4f5e2d6ef320c1435ca10cf672c1ebd718be8451c8b24d40e9",
        "onnx-fp32/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-fp32/manifest.json":
            "e47b3571909108ebba76cc7d8ed65ba83d1e8d09b0fc93606b19dae898eaf194",
        "onnx-int8/model.onnx":
            "09203ee95831390dcb982ae4cbe5abbca2372fa90635191f3ad60f995845ef15",
        "onnx-int8/model.onnx.data":
            "6aa0f0d4207b9b0deb6f0324b71cc25d349ca78605c5f7467587cb3d07d24040",
        "onnx-int8/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-int8/manifest.json":
            "ecb8b4af5aa078a64855b90ffa2390b80cb5158924708b565169c228d04c3dd8",
    },
    "mimo2": {
        "gguf-F16/model.gguf":
            "8a520e00238c3cd2a7e3b8f075f6f46cc4bd6399e8a51baa1102c3fc42fdb4bd",
        "gguf-F16/manifest.json":
            "8cc15d7ae0044253d5d190b9e57d73168d8b45906b3d4e882b176be929e2d275",
        "onnx-fp32/model.onnx":
            "3f2c06249e2e1b70333906e2fe78b82355fba915949b4e8b0a99997175fca8d3",
        "onnx-fp32/model.onnx.data":
            "167790319118e3c305e76071c241d8084485e7051b6a9db56c3866a5cfb8ee7b",
        "onnx-fp32/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-fp32/manifest.json":
            "c03bbc6c6bec24910baf8e165acd363ad8383c6c1ed025e92f80c578511bbf3b",
        "onnx-int8/model.onnx":
            "d564edb50705cf990b9044a97d5aac11949ce0d5e9fb0297fa5eebb04f3e6d88",
        "onnx-int8/model.onnx.data":
            "3349d0a025c1f5cc3c1b0758a52edf3f33bc52ec0dfc6a38595b0d43d7fb0c8c",
        "onnx-int8/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-int8/manifest.json":
            "8d4d61feda8060d4eb8ed9f765ba44268643ac36b9994c2b521540fb16b838b7",
    },
    "mixtral": {
        "gguf-F16/model.gguf":
            "d4e2a496ef825256127f59639fb8cda03849bd7b5415f297af86c806f095584a",
        "gguf-F16/manifest.json":
            "beaf9cbb08d915ae2be6cf7eeacc32d6aa2f01544edee477212938ca25fb1b5d",
        "onnx-fp32/model.onnx":
            "f7378cd2cd58f333f9c0e294bdfa62d45a78ce7f562c8ed61cdcc050ea541f25",
        "onnx-fp32/model.onnx.data":
            "f7d1c3d7c39fda010f7e641c89932bb13dafbb9b0e62538bbe97622e8e4f98cf",
        "onnx-fp32/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-fp32/manifest.json":
            "614337ce0224ead42a4fbcf1f3c3da2923c31642d67b43ed1ca338efd26760d1",
        "onnx-int8/model.onnx":
            "f10cbf7fdc8880dea54162ce2ddba43b03ae7cc4d8c6035ba77efc6977baf3ed",
        "onnx-int8/model.onnx.data":
            "af250cf846009bce7ffbf0526e0024c57489fe78e1d5b9a7ce4a5aa6ed7f22f7",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "9cd976b77fdcc41569696a703dfe45884295c89adfae1605c2f14803c6a12f2d",
    },
    "olmoe": {
        "gguf-F16/model.gguf":
            "cd94d3889d09d98c0dcee09bda829125658a144827090fda1380531636dbfa6d",
        "gguf-F16/manifest.json":
            "fd9f602c34141c861e6100bdbb7c175c08a15bac637eb9137c27e6d962e49048",
        "onnx-fp32/model.onnx":
            "3d7d7c919346391b880207a29f39195cf125e8972e4cf09a35a8601120711296",
        "onnx-fp32/model.onnx.data":
            "e3dd32ef6cafe01c546b7f5c60f1a522061825904a0ade37ed4e38d3123cbf5c",
        "onnx-fp32/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-fp32/manifest.json":
            "0a9e72fc4cc3f4e968512f62ee392efe9f379a8292e137044ebd49991d137996",
        "onnx-int8/model.onnx":
            "dc938d4a9ed32fd1d56ce9f7a9494e8efc37bb3edd84d705985cff685c81f6b0",
        "onnx-int8/model.onnx.data":
            "bf53dc49a12ceeeb0c85247e481d39076c656608c2caea012cb4f6bfd97ecb14",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "2e74ca250473f78c7d68ce1bcd51b707c6fb51261a81e19e6c7b2d8ea4874f71",
    },
    "phimoe": {
        "onnx-fp32/model.onnx":
            "03c2612fb845747324e4415c41cdb2146c5ff5c9828402e670a67577a5554992",
        "onnx-fp32/model.onnx.data":
            "700c913876baaf14effeb24de1c4d77dd11fd6d182f708f13d3a795ffdda19c4",
        "onnx-fp32/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-fp32/manifest.json":
            "7dda26a3ea6d46ec8ab5a581facda1ffae2cba9cfdc0588beda1be504617d83d",
        "onnx-int8/model.onnx":
            "1df63d3908ded56e90d2613630853da3b673a210a2ba142892dd67e529d4c447",
        "onnx-int8/model.onnx.data":
            "35515f7d3e0ba7f542216d0fde4c6999b9495a042dee3c907c9b9432d72e6e73",
        "onnx-int8/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-int8/manifest.json":
            "e27ffa8ce15ce57ea09cb27b525916f623ba270a817dd8fba391b81afac4fb5b",
    },
    "qwen2moe": {
        "gguf-F16/model.gguf":
            "b65e9317b85ec10e58608f93f754be0adf6abdb4607caf8fe4cdacaf7c687f28",
        "gguf-F16/manifest.json":
            "3ecfa0a8aa6aa5d3a58f2e433928413f84446a236e7d1744c3ce8c891f63aa91",
        "onnx-fp32/model.onnx":
            "0d4d1d0fa911c84fdb33cf7911a45cb3710e818b9dc1f1677e123a19c894d6e4",
        "onnx-fp32/model.onnx.data":
            "a9cb4282d0ea9ef24e5dfc2bf09a408076f9b9bfd2ea6a67daa9c65284749412",
        "onnx-fp32/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-fp32/manifest.json":
            "69c243797db9ff30b99b598ecf296c5471b26f4b85a8ce8f4a9f2e31cff6b0a0",
        "onnx-int8/model.onnx":
            "d3b83e285641aa93347e9328e5a5ed1c7321f2ec57b763b35c4c145e452808cc",
        "onnx-int8/model.onnx.data":
            "f1c82a4918e0d9dd2e0fe04bab9c28e848dd98f52c52bd3085c2351139ac4047",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "a1f7eb1b57e0676cb405f7339373e863fb77f0fc1f9d3d738a866402a009d235",
    },
    "qwen35moe": {
        "gguf-F16/model.gguf":
            "a86b56a510e3bbb8eeed47ee320e42243d8520096d4f4472258e13096eb2c34b",
        "gguf-F16/manifest.json":
            "06be3912b0892c31f1e45bc94aff361e55c129934dac6fec32b8d89f5fe26b22",
        "onnx-fp32/model.onnx":
            "69c5020d8e74d7a3b8d5a6e0a3ec7e4aad2e209a3e10c8a8cb95b4b60af2ef33",
        "onnx-fp32/model.onnx.data":
            "4c2d6594f47cb7e9fed772d60560a603d97ac9f3788d1e304385b9987f4baadc",
        "onnx-fp32/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-fp32/manifest.json":
            "2b380e84a731b03346841ad7ef80526174b2329ec996f84eeb0e53cdcfe97116",
        "onnx-int8/model.onnx":
            "99c9c76ca45ab88a55e4b6ce0de6874466a88c0d8f2b83b6b3dc2fad4b2eaa3a",
        "onnx-int8/model.onnx.data":
            "1b5b00936650ce8d8ca46f22f6d1e1437db76350fc22b60d4a48b25bf1ade261",
        "onnx-int8/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-int8/manifest.json":
            "d2a1f95d25536d6d482a6d33409ee05ead3a24394c9b9db93be6b0e48e8ca800",
    },
    "qwen3moe": {
        "gguf-F16/model.gguf":
            "b9c8fcae8098a56bd9d258d8a3d9ba7f21f0d040e6aff06adb67aed2b74a8017",
        "gguf-F16/manifest.json":
            "205d77e7d8e5b20952f860850f9239b570b2a4c4842d456e9d0ab747f8e2639f",
        "onnx-fp32/model.onnx":
            "f49dfa7667ff16e50d66cad282c1d77664daa128ae4ada80b04cc28dfa77b320",
        "onnx-fp32/model.onnx.data":
            "d1f76a89d83f38fdb2101cbdb8890ca15f9a2a5895ff9a24853e24a9d58b40bd",
        "onnx-fp32/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-fp32/manifest.json":
            "8ef0a3df7f8a996147c12f1ccff2efe46edd82e442f1e0d24591b0cbe923fe83",
        "onnx-int8/model.onnx":
            "77f15bae2d91a8abad7c41177f86cbde4ce2eda7a21fd6b6a958352e72169470",
        "onnx-int8/model.onnx.data":
            "d722748ec965a49f1a350482b30fc51a4201d58836cf38398a085abdadbb7e43",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "1d3546ac2b4feaae8a1a6239819f65b34daa934e7efeb9271d600bd15ecd5eb1",
    },
    "qwen3next": {
        "gguf-F16/model.gguf":
            "8cfb017e0c9e117da0045560c58d5a7fee2031a4127ee75caf3557c6208a46e1",
        "gguf-F16/manifest.json":
            "0a31a89a15fcdea31ec21a5181fcd44b70128911f9b9c6eb8f89855d910b3984",
        "onnx-fp32/model.onnx":
            "3ad5abc78596af7cf897653513e80ab995198a1213d0ced00bbe9d65c08552c2",
        "onnx-fp32/model.onnx.data":
            "c69cca43cb63c4773aff4b0932cad46d802cc288c2d8e87d7b6fe63ac79091de",
        "onnx-fp32/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-fp32/manifest.json":
            "7ff925b2a4ebd9a889d09484bcaf9ab6ee5457db8721f9a2d2586b23c0b24ad8",
        "onnx-int8/model.onnx":
            "b761cadfd3625e6019060331635738f0f5a4de6315644851f7130934322417e2",
        "onnx-int8/model.onnx.data":
            "0860b90c059f155d7854a5b5fb78f47605662cb7654bfa1a6d90f4c03b8ffd84",
        "onnx-int8/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-int8/manifest.json":
            "2c9d991156b882356167274317143e05e3e039facfb3998c57b16add64c3f1c8",
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
