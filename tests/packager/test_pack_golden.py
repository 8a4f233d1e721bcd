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
            "ae662e797339e0243fb4bf9f1027cc33ce5d29fa64f331a8f58e24912068464c",
        "onnx-fp32/model.onnx.data":
            "c77f72b53cfd8f553212cef56ff2c7fe40108e7623ee974e012b8eb808718bb7",
        "onnx-fp32/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-fp32/manifest.json":
            "41544da7182d1ff21a6c2868ed8e9359eeb21829bbc3a5702746d0a5a47ca37b",
        "onnx-int8/model.onnx":
            "100195578293640e5e4a961d0b70f558fa7c6d0e668d7cc32af40d6c706a67bd",
        "onnx-int8/model.onnx.data":
            "2b7f35ed0e74cf1fda3fe226fa342bac562c0d30297053c102bfc0b0c289ab65",
        "onnx-int8/genai_config.json":
            "5635deffb3d0e2e93ae45a6c65f215394b2fffa6f47bc915bd18b8296cfb3388",
        "onnx-int8/manifest.json":
            "2becdf97864f7728092f5a2c95de4aa4bb34bc581ffa052194881aa08fec34e7",
    },
    "deepseek3": {
        "gguf-F16/model.gguf":
            "b84d07ed7a50e7e39903f0db179e14f0bd6d7998a69195e30ec0cdcb045ed49e",
        "gguf-F16/manifest.json":
            "34c4cdeb4d6ba0014cecff2f2d3d5d0dd4c572288ed87235a9978034a42dffe1",
        "onnx-fp32/model.onnx":
            "7153923a32b2ee22b888072e60a9757bb1775d3a0a47952691ac21c30d68b67f",
        "onnx-fp32/model.onnx.data":
            "6ee8073bf89cbf2beeb55848a0abcf9fddc139baa73b16c44db00a223a63ac7d",
        "onnx-fp32/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-fp32/manifest.json":
            "39bc30fbb3891ce2aef14a8af563526a9efe0231ce4a5872321028292dda9eff",
        "onnx-int8/model.onnx":
            "6631de8317cbe2de249f6c79c066ed25b5847f5acb2dab0a863f1bb25e28411f",
        "onnx-int8/model.onnx.data":
            "8371c68d7a9ca9ffaff7a5a1e6447956e6346dc42827dbe23b4fdc1bad74a42c",
        "onnx-int8/genai_config.json":
            "35b1f8c9db90b40181e52c7a8898ab926c340c3bdf4f5ca93f276aa1816c012d",
        "onnx-int8/manifest.json":
            "6cb9e8d95fa315cf2b064e5e864c9e915f7632e1036c3d09160c27b186b6cf39",
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
            "d0878879d1fb6ac61ed06be28ca20d4670f79a2674d2fe8e36bed986150eff8f",
        "onnx-fp32/model.onnx.data":
            "f13ea50b9c8fd096b6ed1b8744991c396eeaaece959d5c9d41c780c62ef6a8d4",
        "onnx-fp32/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-fp32/manifest.json":
            "8293fb577aa6c1e5d3282406bda6ff337086e98e22eaf4434230493077651b9b",
        "onnx-int8/model.onnx":
            "fae05f4e70a2ae342d56b1070e1d2a73ca23283759e2ef0f30038f6752bc3ac4",
        "onnx-int8/model.onnx.data":
            "4eb2921e07b170c7c4de18101f6805e8c57d66d4e978a14253128f4d15639c5a",
        "onnx-int8/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-int8/manifest.json":
            "31bdd4eaee31b2cce174e16858950bddd2cbfaeb25148ab9976f38c73c254860",
    },
    "glm4moe": {
        "gguf-F16/model.gguf":
            "fa352d1de6b2598d2771a0519269cc45e4b6b175d48de006e7e961dd289ffb59",
        "gguf-F16/manifest.json":
            "5c1d8a1e84b455517cc2861fbc884dd36b5d97a9a031ee325ccbdeb7dbfbc674",
        "onnx-fp32/model.onnx":
            "9d886dac432614e04a7c4b69fe08680275d38c446d27820845b4e994e55bad37",
        "onnx-fp32/model.onnx.data":
            "9c49a8155c94e4f3e4429fab6697d7137b4cdb33a1fb7774d174dd9c089146e6",
        "onnx-fp32/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-fp32/manifest.json":
            "1d7f78a58ab3426610eb16a0b6f17abb5541d05487573e2338aaee9eab034b7e",
        "onnx-int8/model.onnx":
            "d9c763dcc0cd8654e7dba0aca8b11e75aeba9bbe1f9a0476e75d4d2dd398cb79",
        "onnx-int8/model.onnx.data":
            "6a929857f864b2166a671db3a63a62582157c430a45f8d9f131358c34c9a20c0",
        "onnx-int8/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-int8/manifest.json":
            "e8742647fe2ffd6b4c0de77954c3d35b08cfa31c12a7039ef41a3bd118a7e5a2",
    },
    "granitehybrid": {
        "gguf-F16/model.gguf":
            "8e539ac78f9428376a1524ebf3584340495370586b03c5c9e5c3d487179ec8ab",
        "gguf-F16/manifest.json":
            "8587a303bd9107ae18264948b9bcd2d2188beb013f1141cb3fd4bc571118735f",
        "onnx-fp32/model.onnx":
            "9668332e51a523d3607ac1c54f17783365983e2f7a15efbc74d1262605bfe036",
        "onnx-fp32/model.onnx.data":
            "cee2cde2ab9d0c2ca7022e3a19a3e480fa6f0ae98a95b435586a5863616b5114",
        "onnx-fp32/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-fp32/manifest.json":
            "6762374d8817475fd2ef04c51759b12b226b7a007e1998c35d932fca0eac9744",
        "onnx-int8/model.onnx":
            "e36eec7a8228601e4e2c6faf0b2c371265b6ceb26f2d80f9a71d907d4ee782cb",
        "onnx-int8/model.onnx.data":
            "f48b28fa248c525fd63985a4f8e6a5022b89ac77c3cb5dc0a824e8a4d6dd0a5e",
        "onnx-int8/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-int8/manifest.json":
            "ad3321e6e08ac48d1c6fecc87363dddc34fa3f6b2a3b41aed5cc61a0b71419ab",
    },
    "lfm2moe": {
        "gguf-F16/model.gguf":
            "aa67b7bf7841f0769c9d201947f2e059fb503408e4ffd231dbad3b75ce3c6f9e",
        "gguf-F16/manifest.json":
            "54ba6a5c83154740ac42f790116c7ca25576d4a0e0644b779096aee4fafdd8e3",
        "onnx-fp32/model.onnx":
            "c0677a9cfead8702cb7f405252359416f5c884738ad788b4358402e75c9c32dc",
        "onnx-fp32/model.onnx.data":
            "c46732d8f11eeeaca2b2a1458cb000e4de0ad0f2fcedb92b9b3b22b736cc78a5",
        "onnx-fp32/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-fp32/manifest.json":
            "e744c080dc6b4bb6e116ca6813cd709829aa77e87bf557c21e12e0fd2eabf463",
        "onnx-int8/model.onnx":
            "abd58691452f818e7ea2c9a75bcc6d5a5421bbf296ff003c2c79abdfc8b99266",
        "onnx-int8/model.onnx.data":
            "3b83665a8cf61e47001042d15bf0e7c92b6cf054a25b4e6b3e537b68c55756e9",
        "onnx-int8/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-int8/manifest.json":
            "10cf47388d43e39b5a6f737c9a09f8fb8062caa8340b39818228c9b7d9ed76cd",
    },
    "mimo2": {
        "gguf-F16/model.gguf":
            "8a520e00238c3cd2a7e3b8f075f6f46cc4bd6399e8a51baa1102c3fc42fdb4bd",
        "gguf-F16/manifest.json":
            "8cc15d7ae0044253d5d190b9e57d73168d8b45906b3d4e882b176be929e2d275",
        "onnx-fp32/model.onnx":
            "bcfc898957f73fa50b7fce25c166d2368210762d971378093e6f777e9db521f5",
        "onnx-fp32/model.onnx.data":
            "167790319118e3c305e76071c241d8084485e7051b6a9db56c3866a5cfb8ee7b",
        "onnx-fp32/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-fp32/manifest.json":
            "04eb7d031d67b2d60037b4c824e858b1c66311ea5e2bfe1d5511d6ade8ddacb4",
        "onnx-int8/model.onnx":
            "8c71e92e6844392a0a65f9639a5fcfa73e5316b8293f81be59a1fd47f504dea9",
        "onnx-int8/model.onnx.data":
            "40bdb57b23f8309d2542d0cdc17ad00bab39d354e653a7f49304afc8cce8d438",
        "onnx-int8/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-int8/manifest.json":
            "274766d8eb0752f7341fa29ab6af7c64e212b1f9c9e515dd6efedad7dd5b4a70",
    },
    "llama4": {
        "gguf-F16/model.gguf":
            "38464187d1487058e8fc6637cb0f8da37b0fc5f2a700888c75f5a1f003542971",
        "gguf-F16/manifest.json":
            "19b1ad6cc068984719892abbd1eb261686559fbd1a7cedd1788d210735203dc8",
        "onnx-fp32/model.onnx":
            "6a0c5f297784a683f48ab4e65140a415782a4a762ecfd44417614156a3dc20e9",
        "onnx-fp32/model.onnx.data":
            "48ac39c194c9ed4f5e2d6ef320c1435ca10cf672c1ebd718be8451c8b24d40e9",
        "onnx-fp32/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-fp32/manifest.json":
            "abb115a6a6c80d69b9073ad043eb67fa012c2103a0aa03d9f0f93601688f3ee1",
        "onnx-int8/model.onnx":
            "9b6b7273b173910959082db2178e8c1b95730f51cb941e053341dd182c05e3d3",
        "onnx-int8/model.onnx.data":
            "9ba22008a4a787b1cc52ecf5e0b41910881ff411c85e6f275c43532a63e883ed",
        "onnx-int8/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-int8/manifest.json":
            "a2e2e14e9044ea2f14c3d278c2a2422f0b98c2d27198d0217c4877d47041ecf4",
    },
    "mixtral": {
        "gguf-F16/model.gguf":
            "d4e2a496ef825256127f59639fb8cda03849bd7b5415f297af86c806f095584a",
        "gguf-F16/manifest.json":
            "beaf9cbb08d915ae2be6cf7eeacc32d6aa2f01544edee477212938ca25fb1b5d",
        "onnx-fp32/model.onnx":
            "503f4bbb396cdf0ed6bce0772fe2354b735b1c41fa3d46311a2129d5a19b26b8",
        "onnx-fp32/model.onnx.data":
            "f7d1c3d7c39fda010f7e641c89932bb13dafbb9b0e62538bbe97622e8e4f98cf",
        "onnx-fp32/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-fp32/manifest.json":
            "ee3dcd5ef3435ece9ebfc1f4f14d33808fa14f4cfbc3b10b31a14934d5021434",
        "onnx-int8/model.onnx":
            "8152c459f0710c37cfbaa64aa967764e2bc101fa4d867ab6768c3982a2f5d439",
        "onnx-int8/model.onnx.data":
            "444b92dc6ee264cdec12655cabe5d781e71b8367bb345518b30cc7d3f689c8af",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "2c2bd851dc0a7f34e4d81ab7c3b5574580e663e269f041f6ef4b9e36c1c5fc55",
    },
    "olmoe": {
        "gguf-F16/model.gguf":
            "cd94d3889d09d98c0dcee09bda829125658a144827090fda1380531636dbfa6d",
        "gguf-F16/manifest.json":
            "fd9f602c34141c861e6100bdbb7c175c08a15bac637eb9137c27e6d962e49048",
        "onnx-fp32/model.onnx":
            "088397391fba93df4ac8713ccf490ba7c4e2a396819019df90247f727426e870",
        "onnx-fp32/model.onnx.data":
            "e3dd32ef6cafe01c546b7f5c60f1a522061825904a0ade37ed4e38d3123cbf5c",
        "onnx-fp32/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-fp32/manifest.json":
            "b51ac82334e7e110c6367c46794b6603c017ce55812ca1441585ec8633cab089",
        "onnx-int8/model.onnx":
            "359d55ed27f7193cba25b47b0714292d4bf49b066a3a8369365cd775f9252856",
        "onnx-int8/model.onnx.data":
            "08127851d0fde5145fe741f085626f12042d979c17e8fa3e3ce2307a387ddde5",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "d4ebed7f0cd0c29bea371910542c98259c0679fba43b42242364b7afb8a3d400",
    },
    "qwen35moe": {
        "gguf-F16/model.gguf":
            "a86b56a510e3bbb8eeed47ee320e42243d8520096d4f4472258e13096eb2c34b",
        "gguf-F16/manifest.json":
            "06be3912b0892c31f1e45bc94aff361e55c129934dac6fec32b8d89f5fe26b22",
        "onnx-fp32/model.onnx":
            "f8bd15721b13b884d84269b6aae3a7f42e67ea8c86d0857cf5fc36705fddd966",
        "onnx-fp32/model.onnx.data":
            "4c2d6594f47cb7e9fed772d60560a603d97ac9f3788d1e304385b9987f4baadc",
        "onnx-fp32/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-fp32/manifest.json":
            "9f37e2e8ee016124367fadf6bc3efab80cdd4cdf55932e6e78241de0379b97f6",
        "onnx-int8/model.onnx":
            "dd9cb1a5fdc6427d2fc99e866dcfd0da0282db85c17d11b3292ad8bd8bdb927d",
        "onnx-int8/model.onnx.data":
            "995fa20616a2d0f792d84e24ccb70cac50704499d1ad98a4e93b3bebb2fbe755",
        "onnx-int8/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-int8/manifest.json":
            "df65928eebb34cb289f9fac9a2c3fb85874912a793a7554d6dd61d8f17b5b77e",
    },
    "phimoe": {
        "onnx-fp32/model.onnx":
            "7123cf6a85b315fa84c2e276f12ec3a070be7ae3dc62e49507e6867834024e64",
        "onnx-fp32/model.onnx.data":
            "700c913876baaf14effeb24de1c4d77dd11fd6d182f708f13d3a795ffdda19c4",
        "onnx-fp32/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-fp32/manifest.json":
            "5eb0e6aa15b94c88b3c3e8b4dd72bec5a2d88e81d0628406706336d801c53388",
        "onnx-int8/model.onnx":
            "44e7544a0c382531df5dda773acc6d4c1a5cf97f1ec13b341b22d4052bc5a99e",
        "onnx-int8/model.onnx.data":
            "1a8c1a43d25ff245e479f106f9b848a757fb2d3f8a889a4d28ccc6cdb07e4528",
        "onnx-int8/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-int8/manifest.json":
            "1932cd507b8dd0dd50cc24f42d7edd72e0c296a0743c55054e41c8f4d5a82fe8",
    },
    "qwen3next": {
        "gguf-F16/model.gguf":
            "8cfb017e0c9e117da0045560c58d5a7fee2031a4127ee75caf3557c6208a46e1",
        "gguf-F16/manifest.json":
            "0a31a89a15fcdea31ec21a5181fcd44b70128911f9b9c6eb8f89855d910b3984",
        "onnx-fp32/model.onnx":
            "3539373f1ca02511f5d5cf3e5592dff3cde39d6c4ac1864ea1c6cbd2fc6f6b9a",
        "onnx-fp32/model.onnx.data":
            "c69cca43cb63c4773aff4b0932cad46d802cc288c2d8e87d7b6fe63ac79091de",
        "onnx-fp32/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-fp32/manifest.json":
            "afb1d4bf6e8d326a838232a2a20a6ce6ce6fc6a590bd768018cd644b9ebcfbf4",
        "onnx-int8/model.onnx":
            "a07a169620ebad29b252bdda435cdcbedbb42f9729dbeadf6d256f153973f943",
        "onnx-int8/model.onnx.data":
            "dd692e580934a30a043d918f90e27288c70098be8f1a9d6f6ab9ed6b9428d4a2",
        "onnx-int8/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-int8/manifest.json":
            "1a0795d512cd421fe07172c189cadd743e7dc027ca35bf310f83fc33249ed443",
    },
    "qwen2moe": {
        "gguf-F16/model.gguf":
            "b65e9317b85ec10e58608f93f754be0adf6abdb4607caf8fe4cdacaf7c687f28",
        "gguf-F16/manifest.json":
            "3ecfa0a8aa6aa5d3a58f2e433928413f84446a236e7d1744c3ce8c891f63aa91",
        "onnx-fp32/model.onnx":
            "51f303ac48fb2c9b3d22961a1b38d4083e3c744ce71963b4135a78962d803ab9",
        "onnx-fp32/model.onnx.data":
            "a9cb4282d0ea9ef24e5dfc2bf09a408076f9b9bfd2ea6a67daa9c65284749412",
        "onnx-fp32/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-fp32/manifest.json":
            "e244cf108768625cebea9f24d1e3bf89aa5b0303a2e481a86377a1a64fa53d1a",
        "onnx-int8/model.onnx":
            "4ec281278b74d37e6df0994f66d5e02a37ac13f5445cfb898f598204f6956dc1",
        "onnx-int8/model.onnx.data":
            "59cc3ef281f3edaf646b242d2a024779eb12d02f95449400e1e0688d24af5e34",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "81b0bbb152d03121a09bd29383a8c4d18f07da59088fb1703cc2b2b40bac6646",
    },
    "qwen3moe": {
        "gguf-F16/model.gguf":
            "b9c8fcae8098a56bd9d258d8a3d9ba7f21f0d040e6aff06adb67aed2b74a8017",
        "gguf-F16/manifest.json":
            "205d77e7d8e5b20952f860850f9239b570b2a4c4842d456e9d0ab747f8e2639f",
        "onnx-fp32/model.onnx":
            "dbfd31dbe8f5737c69b4a8e238fadae580ad677bc009fa0b50156987dee38b96",
        "onnx-fp32/model.onnx.data":
            "d1f76a89d83f38fdb2101cbdb8890ca15f9a2a5895ff9a24853e24a9d58b40bd",
        "onnx-fp32/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-fp32/manifest.json":
            "644fb9437d2f033df3dbb2ddcbfdc08f1bd28f5aec68ca373cc307a3902ea7e6",
        "onnx-int8/model.onnx":
            "22ed5002e647eb4b65d9163a5ee22872e1c198b8af0b6c23bf89904661700ed7",
        "onnx-int8/model.onnx.data":
            "95bdc5eb6d8126757ac1ee68da18b7675acb730084d0ff0395845a766f5a56e0",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "50e7e0b18e97077eec1a7ff32e05555e36db93ca06ec501d2c8a69622f57f2b1",
    },
    "gptoss": {
        "gguf-F16/model.gguf":
            "cefc93f822e0f2569839fda0f9189ecf9115eabfc142e695e0b874b817bba62d",
        "gguf-F16/manifest.json":
            "053ab4dc57bfe6fb950950f1a892cba13b6cde8c660bd44ed297216a04a6d5cd",
        "onnx-fp32/model.onnx":
            "52ce679a1e931edbca62b98528a1eccd5cbfea3d4a76ac595df7d2793569e196",
        "onnx-fp32/model.onnx.data":
            "874e57db2378d958268a300e79243c05a92f3b81db56694dd02bccfcead8bc89",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "080cfb021b50d5691dbb8de46b157da7fd935816c37f1a4fb3283291f2913d9f",
        "onnx-int8/model.onnx":
            "775f8fbee229d8ccf66b48b900cf6fe1d3eb0912190e62abc8e1e7d255d52db2",
        "onnx-int8/model.onnx.data":
            "a5aaed5596bc4d02a0143d8c000d75a3ea60cf467bb72f8bd697cbbe89cdd34e",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "44550482b08201319850db3567d40eb5117578aaa5a6408812ce0cc310e4a91d",
    },
    "gptoss_mxfp4": {
        "gguf-F16/model.gguf":
            "c4509834464af0c559d95c5ea405b08b0ad0b0b80d839af72e603458be6f4e01",
        "gguf-F16/manifest.json":
            "78aa45f57cdfa7455c357e485e8991ccabd7815d3099e193c336acd6a1d10099",
        "onnx-fp32/model.onnx":
            "52ce679a1e931edbca62b98528a1eccd5cbfea3d4a76ac595df7d2793569e196",
        "onnx-fp32/model.onnx.data":
            "9bb0a50da47d6c1ac5e88fdf2e05847776375294fd5981610be185ab6b91740c",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "a10ecbbf34332f792e3e47735851cd2066945f5b5cb72a56dfe34586efa03782",
        "onnx-int8/model.onnx":
            "775f8fbee229d8ccf66b48b900cf6fe1d3eb0912190e62abc8e1e7d255d52db2",
        "onnx-int8/model.onnx.data":
            "776c0163fe9189962b3585944afd8f1140752b51e6ccf202520bde9914845cec",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "9b84613f38bf86dd945a9dae8769ad1aff868651792447ae0ffe4869dbcd6888",
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
