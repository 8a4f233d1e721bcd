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
            "dc7de4e92c96b91930b27a1267cdbf3baed8037073afd99540dc00381b05a014",
        "onnx-int8/model.onnx.data":
            "2b7f35ed0e74cf1fda3fe226fa342bac562c0d30297053c102bfc0b0c289ab65",
        "onnx-int8/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-int8/manifest.json":
            "3cb7450648fae6cecf3f2f6d9734e6042ed51e6955af933e8bf51d240ae3bbe6",
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
            "72cf2b1773b2918d044aacf39e8d3b6a926fc0fb3a655d6bda9fe497e6248397",
        "onnx-int8/model.onnx.data":
            "8371c68d7a9ca9ffaff7a5a1e6447956e6346dc42827dbe23b4fdc1bad74a42c",
        "onnx-int8/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-int8/manifest.json":
            "eaf1e4b2df684b3d20cf46e5afae5b5532bafc92a98a7e0503ec3dc4717be8a8",
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
            "af154d6abf307f8faee02d99133527e4de2f7979aca9450fc55129738504c00e",
        "onnx-int8/model.onnx.data":
            "4eb2921e07b170c7c4de18101f6805e8c57d66d4e978a14253128f4d15639c5a",
        "onnx-int8/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-int8/manifest.json":
            "d0865f1d466fd95d5134662f6352873c3e2c804445fe21c86e1897abcc57a091",
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
            "57ecd17d7f06327ba984dead371395013889ab16916957a00b1d1e1a85d654ee",
        "onnx-int8/model.onnx.data":
            "6a929857f864b2166a671db3a63a62582157c430a45f8d9f131358c34c9a20c0",
        "onnx-int8/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-int8/manifest.json":
            "3638a6a928b82483af59df088465f509c430d01e68b0ffc481d5b3217557d24b",
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
            "8e9b51d67253be1f336fe8143b1836543553fefbac51ba7f1a2738536d864f52",
        "onnx-int8/model.onnx.data":
            "a5aaed5596bc4d02a0143d8c000d75a3ea60cf467bb72f8bd697cbbe89cdd34e",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "667ea8233efa7a7ee466e4fd2874ee1032d41191d6a632b0fe1081c22f8223a8",
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
            "8e9b51d67253be1f336fe8143b1836543553fefbac51ba7f1a2738536d864f52",
        "onnx-int8/model.onnx.data":
            "776c0163fe9189962b3585944afd8f1140752b51e6ccf202520bde9914845cec",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "84ace191cc021a16affc3b91af30415ebd313a564dfbf4f85718c972ded3f9a5",
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
            "1584856610543fea176b4007f377a0aadde1674e6d163a46f2c43b470bbcbc10",
        "onnx-int8/model.onnx.data":
            "f48b28fa248c525fd63985a4f8e6a5022b89ac77c3cb5dc0a824e8a4d6dd0a5e",
        "onnx-int8/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-int8/manifest.json":
            "464f62ba3f2814eed9a32e050f8cd00529f2022f3c159413315b4050f53d14f7",
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
            "5c2ca154dd9683c6224c1ad6451e68f2792d87af4153bf70359583ecf4b7d7d2",
        "onnx-int8/model.onnx.data":
            "3b83665a8cf61e47001042d15bf0e7c92b6cf054a25b4e6b3e537b68c55756e9",
        "onnx-int8/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-int8/manifest.json":
            "a29d3b85e985665ba7d8f79a579fac83f70a895dac4d6dc5b5e4522ffdc0062c",
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
            "6d8489062a2e130885734be301a982bea79aef9280ebf05e0f905a15a92d4057",
        "onnx-int8/model.onnx.data":
            "9ba22008a4a787b1cc52ecf5e0b41910881ff411c85e6f275c43532a63e883ed",
        "onnx-int8/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-int8/manifest.json":
            "b51937d21668c58a663be51ea18b66927245bffb15a25e6583d36e7e18e27fe3",
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
            "35e1303ff9a0ae17214bd303d7e1a71d69732cccca4617ff96af43d3105b1654",
        "onnx-int8/model.onnx.data":
            "40bdb57b23f8309d2542d0cdc17ad00bab39d354e653a7f49304afc8cce8d438",
        "onnx-int8/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-int8/manifest.json":
            "8f25e899f0bb3376fd1d3c412657123407d4672ffdf694db55ead9a112348e26",
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
            "d5ace3e721c82c88b0132348f2e106023ea24deca4611b8fd3cf9b6acc57f112",
        "onnx-int8/model.onnx.data":
            "444b92dc6ee264cdec12655cabe5d781e71b8367bb345518b30cc7d3f689c8af",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "fc13fd2fc31a436c926d5c70fd5eea9e1c529cf368af9df99373cd0805035ca8",
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
            "b1be4bf5361c2b3b7fa4c9b8939c0174fa13fd3aaae854eb0f0f99998261a6ed",
        "onnx-int8/model.onnx.data":
            "08127851d0fde5145fe741f085626f12042d979c17e8fa3e3ce2307a387ddde5",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "42ca2e2a889be8a09fa1c898a9e8f8b00469b10a540d976059e19472f69afdbe",
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
            "fa88e133111bae76614b15d5de6a4075f8559862aef119242eb6697893995aad",
        "onnx-int8/model.onnx.data":
            "1a8c1a43d25ff245e479f106f9b848a757fb2d3f8a889a4d28ccc6cdb07e4528",
        "onnx-int8/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-int8/manifest.json":
            "03991b2dab3b72b7b22ad9ec86129ffc0b8fefe612f2e80e38cac6e63dba7707",
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
            "ff33fbacdff4d2d6091587c11c6c1db4aa8ecca8b6b21cbd3e3615f04656a6fa",
        "onnx-int8/model.onnx.data":
            "59cc3ef281f3edaf646b242d2a024779eb12d02f95449400e1e0688d24af5e34",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "ec33c3ea110c1758cec11ca681bec014593e042d3b8f3c6a3845cb60f89d2ed4",
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
            "b6d14579fa10a2d39bb3b3149b62d262884f2ea37de74fed94d26a68aeb13882",
        "onnx-int8/model.onnx.data":
            "995fa20616a2d0f792d84e24ccb70cac50704499d1ad98a4e93b3bebb2fbe755",
        "onnx-int8/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-int8/manifest.json":
            "9ba696ee4ddb582cf88be51d14aaf6e96c8da402561de9429f11eb565b095c19",
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
            "426e3090a7e99d2b212f97f101c3d771f4ba70193c639c7de17546eaf9fa9e26",
        "onnx-int8/model.onnx.data":
            "95bdc5eb6d8126757ac1ee68da18b7675acb730084d0ff0395845a766f5a56e0",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "19284220b8108f2d0febad86032e841b528d52f49be4c0609e7ef4d0911e9e7c",
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
            "0eaa37103a01db67f0c326db4959d1cb42b1fc572295f6a0fb60c5386e1b6b3d",
        "onnx-int8/model.onnx.data":
            "dd692e580934a30a043d918f90e27288c70098be8f1a9d6f6ab9ed6b9428d4a2",
        "onnx-int8/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-int8/manifest.json":
            "d91f547bef2494d7f3586d108e8ff991708c5b0159cd408791834e977bf9866e",
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
