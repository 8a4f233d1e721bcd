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
            "4dc87f500d2e0082c7fdcc72d48cf0117f94e60d17bef6daf9f635687a280e40",
        "onnx-fp32/model.onnx.data":
            "f13ea50b9c8fd096b6ed1b8744991c396eeaaece959d5c9d41c780c62ef6a8d4",
        "onnx-fp32/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-fp32/manifest.json":
            "204d52420869913404f77e03b9571a20faa0c707562d8f1a68d30a9297b76ab4",
        "onnx-int8/model.onnx":
            "b7a8b9618a64ca48bbabb7911e6a6d93bce6126d6cf8a88cb8da0f801252802b",
        "onnx-int8/model.onnx.data":
            "4eb2921e07b170c7c4de18101f6805e8c57d66d4e978a14253128f4d15639c5a",
        "onnx-int8/genai_config.json":
            "7ff954374498b43d58ff8148431cfb29342b9341362ae56652f873c05c464668",
        "onnx-int8/manifest.json":
            "546473b7aa883124ffb30c42cb8517086da6f984b4a1b2f9c057d0d257fe1ba4",
    },
    "glm4moe": {
        "gguf-F16/model.gguf":
            "fa352d1de6b2598d2771a0519269cc45e4b6b175d48de006e7e961dd289ffb59",
        "gguf-F16/manifest.json":
            "5c1d8a1e84b455517cc2861fbc884dd36b5d97a9a031ee325ccbdeb7dbfbc674",
        "onnx-fp32/model.onnx":
            "0234337bb85f105018a31f5dd9f033f2fafde8bdaf687e1aba33eb840517053e",
        "onnx-fp32/model.onnx.data":
            "9c49a8155c94e4f3e4429fab6697d7137b4cdb33a1fb7774d174dd9c089146e6",
        "onnx-fp32/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-fp32/manifest.json":
            "aa73cacb11d8aca67aea8edf529482b0510dc0fd39a43f8a470e74f699c40fc6",
        "onnx-int8/model.onnx":
            "384e4230a6efcf49436b9d94ea1a2c3c10c8030844a6436a5368cbcfd57df097",
        "onnx-int8/model.onnx.data":
            "6a929857f864b2166a671db3a63a62582157c430a45f8d9f131358c34c9a20c0",
        "onnx-int8/genai_config.json":
            "d1649cd6b198923b28f9a3efb7c63e2e5a72d7c7cf6d8a99f5ec139f623504ae",
        "onnx-int8/manifest.json":
            "a6248e677f289b5c9226c88a5525382215c30815b708cbf34ed52329754bd7f2",
    },
    "granitehybrid": {
        "gguf-F16/model.gguf":
            "8e539ac78f9428376a1524ebf3584340495370586b03c5c9e5c3d487179ec8ab",
        "gguf-F16/manifest.json":
            "8587a303bd9107ae18264948b9bcd2d2188beb013f1141cb3fd4bc571118735f",
        "onnx-fp32/model.onnx":
            "3eca9d816118c763937c2cf8bcd96635f5952fce37e9f85e90d5e5b6fab28419",
        "onnx-fp32/model.onnx.data":
            "cee2cde2ab9d0c2ca7022e3a19a3e480fa6f0ae98a95b435586a5863616b5114",
        "onnx-fp32/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-fp32/manifest.json":
            "7029749b1e455a504cf638a547700ce2e3b354d6f2fdefdd0cba5d307e798673",
        "onnx-int8/model.onnx":
            "ac6d128769eb12e88444f21e4f3b99339fe9fc4d285bef8b880115deae0a2113",
        "onnx-int8/model.onnx.data":
            "f48b28fa248c525fd63985a4f8e6a5022b89ac77c3cb5dc0a824e8a4d6dd0a5e",
        "onnx-int8/genai_config.json":
            "311b39211435f72d61b8e6dca5258b554250ee0c53e50e27acd352178331c9cf",
        "onnx-int8/manifest.json":
            "e3d3bf514c596fc0d28d3151b9404d93f09174afb175cf9ae349f28544b3fe65",
    },
    "lfm2moe": {
        "gguf-F16/model.gguf":
            "aa67b7bf7841f0769c9d201947f2e059fb503408e4ffd231dbad3b75ce3c6f9e",
        "gguf-F16/manifest.json":
            "54ba6a5c83154740ac42f790116c7ca25576d4a0e0644b779096aee4fafdd8e3",
        "onnx-fp32/model.onnx":
            "c02768d0704e9cc5b199b4e62a0310855dbfb111272db6e003aceb5f80e083bc",
        "onnx-fp32/model.onnx.data":
            "c46732d8f11eeeaca2b2a1458cb000e4de0ad0f2fcedb92b9b3b22b736cc78a5",
        "onnx-fp32/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-fp32/manifest.json":
            "9b4b0b188b80a9806de8abecfef2cedac7cd589415df167fd56a7ba51d2ee16d",
        "onnx-int8/model.onnx":
            "72ec1e386f1215b2b32525bd17a05ff003d7fe938268e6744fd054933f443fa9",
        "onnx-int8/model.onnx.data":
            "3b83665a8cf61e47001042d15bf0e7c92b6cf054a25b4e6b3e537b68c55756e9",
        "onnx-int8/genai_config.json":
            "813643e7a5382772964a2dbcca6f127d2e2ceb7b69835acc20cc1f709fd1224b",
        "onnx-int8/manifest.json":
            "52447f2749b7a8ca0af209a2fcbd4aaa81fbf0aa70ee55eba29755b5e37908c4",
    },
    "mimo2": {
        "gguf-F16/model.gguf":
            "8a520e00238c3cd2a7e3b8f075f6f46cc4bd6399e8a51baa1102c3fc42fdb4bd",
        "gguf-F16/manifest.json":
            "8cc15d7ae0044253d5d190b9e57d73168d8b45906b3d4e882b176be929e2d275",
        "onnx-fp32/model.onnx":
            "38bfde409950469727e0711801f62882262c3904242bbb164c8746f7bc904e3c",
        "onnx-fp32/model.onnx.data":
            "167790319118e3c305e76071c241d8084485e7051b6a9db56c3866a5cfb8ee7b",
        "onnx-fp32/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-fp32/manifest.json":
            "d531acb26a7b321db27c77c5a684e00dad9d53fe93548117d00763a5339c323a",
        "onnx-int8/model.onnx":
            "bfeedd49dac7a0ed5690fab368db2875efe31ee5c7f923b69d1dacc3e2f32263",
        "onnx-int8/model.onnx.data":
            "40bdb57b23f8309d2542d0cdc17ad00bab39d354e653a7f49304afc8cce8d438",
        "onnx-int8/genai_config.json":
            "101eb4edbe2763879b7f5fc51653b4cfd3432aaf8ba51a1188efa34cec181a4d",
        "onnx-int8/manifest.json":
            "c50d3e7d3989e697618acf284fad34c47fa3fe45085a6ba6949a6bc40c480c1f",
    },
    "llama4": {
        "gguf-F16/model.gguf":
            "38464187d1487058e8fc6637cb0f8da37b0fc5f2a700888c75f5a1f003542971",
        "gguf-F16/manifest.json":
            "19b1ad6cc068984719892abbd1eb261686559fbd1a7cedd1788d210735203dc8",
        "onnx-fp32/model.onnx":
            "a71c4b9c5d83f6c7e03ed66cb9e373c2d209747c0589fbc8486b292d7840357e",
        "onnx-fp32/model.onnx.data":
            "48ac39c194c9ed4f5e2d6ef320c1435ca10cf672c1ebd718be8451c8b24d40e9",
        "onnx-fp32/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-fp32/manifest.json":
            "5851fa4ba269e72121e813ca90239a8125a1b4c4adad52cb71a2983ec4a1e895",
        "onnx-int8/model.onnx":
            "c5b5c6bf6c2bb12db2d8e251e9321765eeaf5979e5097e7ede839b4d380efd42",
        "onnx-int8/model.onnx.data":
            "9ba22008a4a787b1cc52ecf5e0b41910881ff411c85e6f275c43532a63e883ed",
        "onnx-int8/genai_config.json":
            "7a4a4adb7b6aac452ebf29f3a7a97f2b6fc0183e0476883e37a5d9a0b9e9bbaf",
        "onnx-int8/manifest.json":
            "5206cae6f5ac397a1a7633e6e6d6e9ae830a359a759928e883980cbc7584656f",
    },
    "mixtral": {
        "gguf-F16/model.gguf":
            "d4e2a496ef825256127f59639fb8cda03849bd7b5415f297af86c806f095584a",
        "gguf-F16/manifest.json":
            "beaf9cbb08d915ae2be6cf7eeacc32d6aa2f01544edee477212938ca25fb1b5d",
        "onnx-fp32/model.onnx":
            "81879defcffe6815f6cfcea3659e5ba76c3f06e110d9b3c8c09af834f54395df",
        "onnx-fp32/model.onnx.data":
            "f7d1c3d7c39fda010f7e641c89932bb13dafbb9b0e62538bbe97622e8e4f98cf",
        "onnx-fp32/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-fp32/manifest.json":
            "991ba86c873b2e4da74bc2061b18de327402490794905ac9ed85543dfa5ee272",
        "onnx-int8/model.onnx":
            "1314f5a34e375e3a20baa0f164e4a4c0ff87be0eea9ecf3bb64a4e35631f6ebd",
        "onnx-int8/model.onnx.data":
            "444b92dc6ee264cdec12655cabe5d781e71b8367bb345518b30cc7d3f689c8af",
        "onnx-int8/genai_config.json":
            "f7980204670e69f691c34658d036de771ae834830083efa67b63e0bac88c08d8",
        "onnx-int8/manifest.json":
            "02163f6a81f5752791193ee7c4fc9363cdc729d72864a96671f8ae326e001c4b",
    },
    "olmoe": {
        "gguf-F16/model.gguf":
            "cd94d3889d09d98c0dcee09bda829125658a144827090fda1380531636dbfa6d",
        "gguf-F16/manifest.json":
            "fd9f602c34141c861e6100bdbb7c175c08a15bac637eb9137c27e6d962e49048",
        "onnx-fp32/model.onnx":
            "405dfd82a768af7f5c0d803b8c415fc3d5838e1241fa445973d22a01792ff6a2",
        "onnx-fp32/model.onnx.data":
            "e3dd32ef6cafe01c546b7f5c60f1a522061825904a0ade37ed4e38d3123cbf5c",
        "onnx-fp32/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-fp32/manifest.json":
            "144a03a2a54fd565d8c8fa44fa7480988c8da9bdabe1ad62c3db3da616644ad2",
        "onnx-int8/model.onnx":
            "b526d970839fad5247e648091a528fb30d2863f15f77e4a9a508d1fad3f1d17a",
        "onnx-int8/model.onnx.data":
            "08127851d0fde5145fe741f085626f12042d979c17e8fa3e3ce2307a387ddde5",
        "onnx-int8/genai_config.json":
            "8deba0911cb998699f7d8bbc1ed0931dcb616f31824df42977f5c12590dc6ba6",
        "onnx-int8/manifest.json":
            "ce72a648621b0ff7782f4d73391906c9cbe5cd8c0373f11e87dece5cc4c92239",
    },
    "qwen35moe": {
        "gguf-F16/model.gguf":
            "a86b56a510e3bbb8eeed47ee320e42243d8520096d4f4472258e13096eb2c34b",
        "gguf-F16/manifest.json":
            "06be3912b0892c31f1e45bc94aff361e55c129934dac6fec32b8d89f5fe26b22",
        "onnx-fp32/model.onnx":
            "6308057dc2a594e451cc7df62c41f3aa3e34d47f0c7d52420cae8a17d8f20b2d",
        "onnx-fp32/model.onnx.data":
            "4c2d6594f47cb7e9fed772d60560a603d97ac9f3788d1e304385b9987f4baadc",
        "onnx-fp32/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-fp32/manifest.json":
            "1379cbe83dcfc0c267b67f50d741b86884d7ffaf7457ce90251fe10ff2ce6836",
        "onnx-int8/model.onnx":
            "e0400c9484a682b8213f48795cadb51ab2bb35a55b5c3eeb03a322085566730f",
        "onnx-int8/model.onnx.data":
            "995fa20616a2d0f792d84e24ccb70cac50704499d1ad98a4e93b3bebb2fbe755",
        "onnx-int8/genai_config.json":
            "dc540e4dcf32e346281559dffdb36814d8dd9b664635d4cff9e8869c5cf4a7f7",
        "onnx-int8/manifest.json":
            "0e80430a9b5255131838eb03105dbc841ef93113662e2a5f8a14da933be9b9a7",
    },
    "phimoe": {
        "onnx-fp32/model.onnx":
            "900ef4f495aef48066aae95b67cb4e77d6c73538c49c0669c7a37d906342b8a3",
        "onnx-fp32/model.onnx.data":
            "700c913876baaf14effeb24de1c4d77dd11fd6d182f708f13d3a795ffdda19c4",
        "onnx-fp32/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-fp32/manifest.json":
            "f4dee184d46fb2278ddbff02c27de135b9b8f0aef498367fcc20511967313637",
        "onnx-int8/model.onnx":
            "b883b50dd7f4efe3d5c57ed4827e7e5da644ad44ffb1bb79dcd03bf16c44f785",
        "onnx-int8/model.onnx.data":
            "1a8c1a43d25ff245e479f106f9b848a757fb2d3f8a889a4d28ccc6cdb07e4528",
        "onnx-int8/genai_config.json":
            "b90530ab86b096e923812cfe11a56d19bae2de14cac53e947c1b832c23f9c212",
        "onnx-int8/manifest.json":
            "e3a4a0c3bcf326fcfdca70727cf05667703e422e3e32f7d1d1044bee795d5420",
    },
    "qwen3next": {
        "gguf-F16/model.gguf":
            "8cfb017e0c9e117da0045560c58d5a7fee2031a4127ee75caf3557c6208a46e1",
        "gguf-F16/manifest.json":
            "0a31a89a15fcdea31ec21a5181fcd44b70128911f9b9c6eb8f89855d910b3984",
        "onnx-fp32/model.onnx":
            "dbaed26d4a0b6685c14af4a31f21663c82c7841f0a14391e9ac1c1d7733e703f",
        "onnx-fp32/model.onnx.data":
            "c69cca43cb63c4773aff4b0932cad46d802cc288c2d8e87d7b6fe63ac79091de",
        "onnx-fp32/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-fp32/manifest.json":
            "042734b80c1b607cd1fb39c32ffb33c59d69bb4a57164ea3abf2a5263e383447",
        "onnx-int8/model.onnx":
            "0232b7858b0518eeefc1ad2a61b627eab05146fdebb9c39011e3415131a6c472",
        "onnx-int8/model.onnx.data":
            "dd692e580934a30a043d918f90e27288c70098be8f1a9d6f6ab9ed6b9428d4a2",
        "onnx-int8/genai_config.json":
            "1a5c39350b1a53adcb4902a3f89d2a7aa8568617184d488be3ef9fda9d90b22a",
        "onnx-int8/manifest.json":
            "5d2430fd0393cf6ff6229ecfb2a13b64c9252477c0760035a4e4cb28131e07b6",
    },
    "qwen2moe": {
        "gguf-F16/model.gguf":
            "b65e9317b85ec10e58608f93f754be0adf6abdb4607caf8fe4cdacaf7c687f28",
        "gguf-F16/manifest.json":
            "3ecfa0a8aa6aa5d3a58f2e433928413f84446a236e7d1744c3ce8c891f63aa91",
        "onnx-fp32/model.onnx":
            "199dbfd006dff5efcb5b4876acd3a4391814157b1dcdcf39b7a87f2e0ebe5efb",
        "onnx-fp32/model.onnx.data":
            "a9cb4282d0ea9ef24e5dfc2bf09a408076f9b9bfd2ea6a67daa9c65284749412",
        "onnx-fp32/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-fp32/manifest.json":
            "fb65da2cbf1bb5f5442b850f3e002574e54cd6347fa4ca53638b8364ca53664e",
        "onnx-int8/model.onnx":
            "bf7000142642ed3a8bcd134c78be94e417a51ebb5e37b70db67852aa3a243dbd",
        "onnx-int8/model.onnx.data":
            "59cc3ef281f3edaf646b242d2a024779eb12d02f95449400e1e0688d24af5e34",
        "onnx-int8/genai_config.json":
            "f82b3d3a7bcb21d38b948c2131fce8e67957a82de2531af263616551df7c5a1b",
        "onnx-int8/manifest.json":
            "3ca6d050b9cb0ccc7e5048b38779df79992b48eabfa1d9b7cb59742952047c1c",
    },
    "qwen3moe": {
        "gguf-F16/model.gguf":
            "b9c8fcae8098a56bd9d258d8a3d9ba7f21f0d040e6aff06adb67aed2b74a8017",
        "gguf-F16/manifest.json":
            "205d77e7d8e5b20952f860850f9239b570b2a4c4842d456e9d0ab747f8e2639f",
        "onnx-fp32/model.onnx":
            "29fb47989d63da32bf31992af04ebc2b51ab11a3c0fdd80173a0758821ddce43",
        "onnx-fp32/model.onnx.data":
            "d1f76a89d83f38fdb2101cbdb8890ca15f9a2a5895ff9a24853e24a9d58b40bd",
        "onnx-fp32/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-fp32/manifest.json":
            "2c15f7da72aa9479ea1fb29db1843190aa1639fe6ba4800e6a0155d0a6d0c970",
        "onnx-int8/model.onnx":
            "a818cf9cfe64c37bcee0f01f5081c3dc09cea52bc08adabaad0195e3cfd7b763",
        "onnx-int8/model.onnx.data":
            "95bdc5eb6d8126757ac1ee68da18b7675acb730084d0ff0395845a766f5a56e0",
        "onnx-int8/genai_config.json":
            "18f95ce5f2fd5f3cefe9b32e7c26ca57bf4701f8fa461543f41b3063e9b037f1",
        "onnx-int8/manifest.json":
            "55792f979a1538fffc110e6338d5f91c99981597bf83ea15c05885ceeb62da8b",
    },
    "gptoss": {
        "gguf-F16/model.gguf":
            "cefc93f822e0f2569839fda0f9189ecf9115eabfc142e695e0b874b817bba62d",
        "gguf-F16/manifest.json":
            "053ab4dc57bfe6fb950950f1a892cba13b6cde8c660bd44ed297216a04a6d5cd",
        "onnx-fp32/model.onnx":
            "7f186bed185b70862e1c6d1e25a82c608d4df5fbac209b7e623f5c7860434005",
        "onnx-fp32/model.onnx.data":
            "874e57db2378d958268a300e79243c05a92f3b81db56694dd02bccfcead8bc89",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "ee5ff8f8e83a8f56fc113261b87c61e3d449882f5019b18de5365d5ba7b5f363",
        "onnx-int8/model.onnx":
            "9c330abea5c3422d77dbc51b8fddfdda281ba4e3fe02eda4960fcb6f06576110",
        "onnx-int8/model.onnx.data":
            "a5aaed5596bc4d02a0143d8c000d75a3ea60cf467bb72f8bd697cbbe89cdd34e",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "62afe3241ce7caa64cef9030fe67642e09de597101dbf2026aa24756ea193e0a",
    },
    "gptoss_mxfp4": {
        "gguf-F16/model.gguf":
            "c4509834464af0c559d95c5ea405b08b0ad0b0b80d839af72e603458be6f4e01",
        "gguf-F16/manifest.json":
            "78aa45f57cdfa7455c357e485e8991ccabd7815d3099e193c336acd6a1d10099",
        "onnx-fp32/model.onnx":
            "7f186bed185b70862e1c6d1e25a82c608d4df5fbac209b7e623f5c7860434005",
        "onnx-fp32/model.onnx.data":
            "9bb0a50da47d6c1ac5e88fdf2e05847776375294fd5981610be185ab6b91740c",
        "onnx-fp32/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-fp32/manifest.json":
            "3e455cfbe3b008ac8467416ad4c5186225fae53bb8e70c1fdb1d9389319c2de0",
        "onnx-int8/model.onnx":
            "9c330abea5c3422d77dbc51b8fddfdda281ba4e3fe02eda4960fcb6f06576110",
        "onnx-int8/model.onnx.data":
            "776c0163fe9189962b3585944afd8f1140752b51e6ccf202520bde9914845cec",
        "onnx-int8/genai_config.json":
            "90ad126c2b1e7ea75e9f967b9adadae20b614b56bd7bea655cd77b72ec3a0879",
        "onnx-int8/manifest.json":
            "82a1201edbe5e8cdb8b4eb86151a8a820efff94c20d0a5d651b276dcf948512b",
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
