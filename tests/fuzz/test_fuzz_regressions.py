"""Exact reproducers of what the fuzzer found and was fixed, so each stays fixed by name.

Bundle cases edit a copy of the session's tiny bundle with the fuzzer's own GGUF codec and
bring the manifest in line (size, hash, layout) the way a hostile re-pack would, so only the
check under test can refuse it; llama.cpp is never reached (it used to abort the process).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.errors import BundleError, EdgemoeError
from tests.fuzz.gguf_model import KV, GGUFModel, parse, serialize


def _rebundle(tiny_bundle: Path, tmp_path: Path, edit: Callable[[GGUFModel], None],
              shape: dict | None = None) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["shape"].update(shape or {})
    model = bundle / manifest["model_file"]
    parsed = parse(model.read_bytes())
    edit(parsed)
    data = serialize(parsed)
    model.write_bytes(data)
    manifest["files"][manifest["model_file"]] = {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def _set_kv(key_suffix: str, vtype: int, value) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        kv = next(kv for kv in m.kvs if kv.key.endswith(key_suffix))
        kv.vtype, kv.value = vtype, value

    return edit


def _tokens_all(text: str) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        kv = m.kv("tokenizer.ggml.tokens")
        assert kv is not None
        kv.value = (kv.value[0], [text] * len(kv.value[1]))

    return edit


def _cut_token_types(m: GGUFModel) -> None:
    kv = m.kv("tokenizer.ggml.token_type")
    assert kv is not None
    kv.value = (kv.value[0], kv.value[1][:10])


def _add_kv(key_suffix: str, value: int) -> Callable[[GGUFModel], None]:
    def edit(m: GGUFModel) -> None:
        arch = m.kv("general.architecture")
        assert arch is not None
        m.kvs.append(KV(f"{arch.value}.{key_suffix}", 4, value))

    return edit


@pytest.mark.engine
@pytest.mark.parametrize(
    ("case", "edit", "shape", "field"),
    [
        # llama.cpp GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS): SIGABRT when both agreed.
        ("3000 layers", _set_kv(".block_count", 4, 3000), {"n_layers": 3000}, "n_layers"),
        # GGML_ASSERT(n_expert_groups < n_expert)
        ("expert groups", _add_kv("expert_group_count", 8), {}, "expert groups"),
        # GGML_ASSERT(n_layer_nextn <= n_layer_all)
        ("next-n layers", _add_kv("nextn_predict_layers", 9), {}, "nextn_predict_layers"),
        # GGML_ASSERT(n_expert_used_max > 0) when the key is missing
        ("no top-k key", lambda m: m.kvs.remove(next(
            kv for kv in m.kvs if kv.key.endswith(".expert_used_count"))), {}, "missing"),
    ],
)
def test_llama_cpp_limits_are_checked_before_it_asserts(case, edit, shape, field, tiny_bundle,
                                                        tmp_path):
    from runtime.bundles.open import open_bundle

    with pytest.raises(BundleError) as e:
        open_bundle(_rebundle(tiny_bundle, tmp_path, edit, shape))
    assert field in str(e.value)


@pytest.mark.engine
@pytest.mark.parametrize(
    ("case", "edit", "field"),
    [
        # general.alignment = 1 put tensor data off the 32-byte boundary: GGML_ASSERT, SIGABRT.
        ("alignment 1", lambda m: m.kvs.append(KV("general.alignment", 4, 1)), "aligned"),
        # context_length 2**31-1: llama-cpp-python's tokenize allocated 8 GiB (MemoryError).
        ("huge trained context", _set_kv(".context_length", 4, 2**31 - 1), "context_length"),
        # expert_used_count as an array: int([...]) raised TypeError inside the check.
        ("top-k as an array", _set_kv(".expert_used_count", 9, (4, [1, 2])), "expert_used_count"),
        ("block count off by one", _set_kv(".block_count", 4, 4), "n_layers"),
        ("another architecture", _set_kv("general.architecture", 8, "llama"), "gguf_arch"),
        # every token "<s>": llama-vocab.cpp GGML_ASSERT(id_to_token.size() == ...), SIGABRT.
        ("duplicate tokens", _tokens_all("<s>"), "twice"),
        ("token types cut short", _cut_token_types, "entries"),
        ("tokens retyped", _set_kv("tokenizer.ggml.tokens", 9, (5, [1, 2])), "array of STRING"),
    ],
)
def test_hostile_gguf_is_refused_at_open(case, edit, field, tiny_bundle, tmp_path):
    from runtime.bundles.open import open_bundle

    bundle = _rebundle(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError) as e:
        open_bundle(bundle)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.engine
def test_huge_array_count_is_refused_before_gguf_py_loops_over_it(tiny_bundle, tmp_path):
    """A token-type array claiming 2**32+1 items: gguf-py looped over them for minutes."""
    from runtime.bundles.open import open_bundle

    bundle = _rebundle(tiny_bundle, tmp_path, lambda m: None)
    model = bundle / "model.gguf"
    buf = bytearray(model.read_bytes())
    count = next(r for r in parse(bytes(buf)).regions
                 if r.kind == "kv_arr_count" and r.label == "tokenizer.ggml.token_type")
    struct.pack_into("<Q", buf, count.start, 2**32 + 1)
    model.write_bytes(bytes(buf))
    started = time.monotonic()
    with pytest.raises(BundleError, match="cannot fit"):
        open_bundle(bundle)
    assert time.monotonic() - started < 10


TRACE_DAMAGE = {
    "layer not a number": {"moe_layers": ["gguf"]},
    "meta a string": {"meta": "gguf"},
    "step not a list": {"steps": [{"0": 5}]},
    "layer key not ASCII digits": {"steps": [{"٣": [0]}]},
    "layer key of 5000 digits": {"steps": [{"1" * 5000: [0]}]},
    "absurd expert count": {"n_experts": 4666763413211058810},
    "bool expert count": {"n_experts": True},
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(TRACE_DAMAGE))
def test_trace_file_damage_is_a_trace_error(case, tmp_path):
    from runtime.experts.routing_trace import RoutingTrace, TraceError, synthetic_trace

    doc = {**synthetic_trace(4, 8, (0, 1), 2).to_dict(), **TRACE_DAMAGE[case]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceError):
        RoutingTrace.load(path).summary()


@pytest.mark.unit
@pytest.mark.parametrize(
    "blob", [b'{"format": "\xff"}', b"[" * 100_000 + b"]" * 100_000, b'{"n": ' + b"9" * 5000 + b"}"]
)
def test_unreadable_json_is_a_domain_error(blob, tmp_path):
    from packager.usage import UsageProfile
    from runtime.experts.routing_trace import RoutingTrace

    path = tmp_path / "f.json"
    path.write_bytes(blob)
    for load in (RoutingTrace.load, UsageProfile.load):
        with pytest.raises(EdgemoeError):
            load(path)


@pytest.mark.unit
@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["counts"]["0"].__setitem__(0, float("nan")),  # int(nan) raised ValueError
        lambda d: d["counts"]["0"].__setitem__(0, 1e308),  # a count must be an integer
        lambda d: d["weight_sum"]["0"].__setitem__(0, float("inf")),
        lambda d: d.update(layers=[True]),  # a bool is not a layer index
    ],
)
def test_usage_numbers_are_checked(change, tmp_path):
    from packager.usage import UsageError, UsageProfile
    from tests.fuzz.seeds import synthetic_usage

    doc = synthetic_usage(4, 2, (0,), n_tokens=8)
    change(doc)
    path = tmp_path / "u.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError):
        UsageProfile.load(path)


# --- fixes of the entries once listed in tests/fuzz/known.py -----------------------------------
@pytest.mark.unit
@pytest.mark.parametrize(
    ("blob", "problem"),
    [
        (b'{"per_layer": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"per_layer": ' + b"9" * 5000 + b"}", "4300 digits"),
        (None, "cannot read"),  # a directory where the file should be
    ],
)
def test_usage_file_for_the_planner_fails_cleanly(blob, problem, tmp_path):
    """read-json-residue: `--usage FILE` (packager.planning.load_usage) read through read_json."""
    from packager.errors import PackError
    from packager.planning import load_usage

    path = tmp_path / "usage.json"
    path.mkdir() if blob is None else path.write_bytes(blob)
    with pytest.raises(PackError) as e:
        load_usage(path)
    message = str(e.value)
    assert problem in message and str(path) in message and "\n" not in message
    assert "set_int_max_str_digits" not in message


def _profile_table() -> dict:
    import tomllib

    from tests.fuzz.seeds import ROOT

    return tomllib.loads((ROOT / "device_profiles" / "laptop-16gb.toml").read_text())


@pytest.mark.unit
@pytest.mark.parametrize(
    ("field", "value"),
    [("default_quant", "Q4\ud800"), ("kv_cache_type", "\ud800"), ("formats", ["gg\ud800"])],
)
def test_lone_surrogate_is_escaped_and_the_field_named(field, value):
    """validation-surrogate: pydantic encodes an error's context to UTF-8; a lone surrogate
    (a JSON "\\ud800") in it made the message unrenderable instead of naming the field."""
    from contract.device_profile import profile_from_table
    from contract.errors import ProfileError

    with pytest.raises(ProfileError) as e:
        profile_from_table({**_profile_table(), field: value}, "p.toml")
    message = str(e.value)
    message.encode("utf-8")  # printable as it is
    assert f"field '{field}'" in message and "\\ud800" in message
    assert "unprintable" not in message


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("isa = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("threads = " + "9" * 5000, "4300 digits"),
    ],
)
def test_profile_toml_residue_is_a_profile_error(text, problem, tmp_path):
    """profile-toml-residue: tomllib raises RecursionError and ValueError besides
    TOMLDecodeError."""
    from device_profiles import ProfileError, load_profile_file

    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match="not valid TOML") as e:
        load_profile_file(path)
    assert problem in str(e.value) and str(path) in str(e.value)


@pytest.mark.unit
@pytest.mark.parametrize("size", ["9" * 400 + "GiB", "9" * 400, 10**400, "9223372036854775808"])
def test_absurd_size_is_a_clear_error(size):
    """parse-size-overflow: a 400-digit size was float inf, and round(inf) raised
    OverflowError, which pydantic does not turn into a validation error."""
    from contract.device_profile import profile_from_table
    from contract.errors import ProfileError
    from contract.sizes import parse_size
    from runtime.budget import parse_budget
    from runtime.errors import BudgetError

    with pytest.raises(ValueError, match="too large"):
        parse_size(size)
    with pytest.raises(ProfileError, match=r"field 'model_memory': size .* is too large"):
        profile_from_table({**_profile_table(), "model_memory": size}, "p.toml")
    with pytest.raises(BudgetError, match="budget"):
        parse_budget(str(size))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ 1/0 }}", "ZeroDivisionError"),
        ("{% for i in range(99999999) %}x{% endfor %}", "OverflowError: Range too big"),
        ("{{ 1.5 ** 10000 }}", "OverflowError"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    ],
)
def test_chat_template_python_errors_are_template_errors(template, problem):
    """chat-template-escapes: render_chat caught jinja's TemplateError (and a few) only."""
    from runtime.errors import ChatTemplateError
    from runtime.generation.chat_template import render_chat

    with pytest.raises(ChatTemplateError, match="chat template failed") as e:
        render_chat(template, [{"role": "user", "content": "hi"}])
    assert problem in str(e.value) and "\n" not in str(e.value)


UNBOUNDED_TEMPLATES = {
    "repeat a gigabyte": ("{{ 'x' * 10**9 }}", "repeated value"),
    "nested loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                     "{% endfor %}", "steps"),
    "nested loops over one range": ("{% set r = range(99999) %}{% for i in r %}{% for j in r %}"
                                    "{% endfor %}{% endfor %}", "steps"),
    "megabytes of output": ("{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}",
                            "exceeds"),
    "doubling in a namespace": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                                "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", "joined"),
    "huge power": ("{{ 2 ** (10**9) }}", "bits"),
    "huge format width": ("{{ '%999999999d' % 1 }}", "format width"),
    "huge str.format width": ("{{ '{:>999999999}'.format(1) }}", "format width"),
    "huge center": ("{{ 'x'|center(999999999) }}", "width"),
    "huge ljust": ("{{ 'x'.ljust(10**9) }}", "width"),
    "join multiplies": ("{{ range(99999)|join('y' * 99999) }}", "joined value"),
    "replace multiplies": ("{{ ('x' * 99999)|replace('x', 'y' * 99999) }}", "replaced"),
    "a list of long strings": ("{% set s = 'x' * 999999 %}{{ [s, s, s] }}", "value's text"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", sorted(UNBOUNDED_TEMPLATES))
def test_chat_template_rendering_is_bounded(case):
    """chat-template-unbounded: a manifest's template made Model.chat tokenize a gigabyte
    prompt (abort on allocation failure) or never finish rendering."""
    from runtime.generation.chat_template import render_chat
    from runtime.generation.template_sandbox import TemplateTooCostly

    template, problem = UNBOUNDED_TEMPLATES[case]
    started = time.monotonic()
    with pytest.raises(TemplateTooCostly, match="chat template failed") as e:
        render_chat(template, [{"role": "user", "content": "hi"}])
    assert problem in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - started < 15


@pytest.mark.unit
def test_bounded_sandbox_renders_as_transformers_does():
    """The bounds change no output: loops, loop.*, namespaces, filters, `~`, `%`, str
    methods and tojson render exactly as transformers renders a chat template (its
    sandboxed jinja with its own tojson: key order kept, no HTML escaping)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from runtime.generation.chat_template import render_chat

    template = (
        "{% set ns = namespace(last=-1) %}{% for m in messages[::-1] %}"
        "{% if m.role == 'user' and ns.last < 0 %}{% set ns.last = loop.revindex0 %}{% endif %}"
        "{% endfor %}{% for m in messages %}<|{{ m.role|upper }}|>{{ m.content|trim }}"
        "{{ ' (%d/%d)' % (loop.index, loop.length) }}{% if loop.index0 == ns.last %}*{% endif %}"
        "{{ '\\n' ~ m.content.split()|join(',') ~ ('!' * 3) }}{{ m|tojson }}\n{% endfor %}"
        "{{ messages|map(attribute='role')|unique|list|tojson }}{{ '{:>5}'.format('x') }}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    messages = [{"role": "system", "content": " be brief "},
                {"role": "user", "content": "what is 2 + 2 & <b>?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "ok"}]
    expected = _compile_jinja_template(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
    assert render_chat(template, messages) == expected


@pytest.mark.engine
@pytest.mark.parametrize(
    ("n_experts", "layers", "problem"),
    [(None, (40, 41), "MoE layers"), (3, None, "experts per layer")],
)
def test_replay_of_another_models_trace_is_a_trace_error(n_experts, layers, problem,
                                                        tiny_bundle):
    """replay-trace-shape: replay_budgets did not check the trace against the bundle, and a
    well-formed trace of another shape raised ValueError from ExpertCache."""
    from runtime.bundles.open import open_bundle
    from runtime.experts.routing_trace import TraceError, synthetic_trace
    from runtime.tracing import replay_budgets

    shape = open_bundle(tiny_bundle).manifest.shape
    trace = synthetic_trace(8, n_experts or shape.n_experts, layers or shape.moe_layers,
                            2 if n_experts else shape.top_k)
    with pytest.raises(TraceError, match="recorded on another model") as e:
        replay_budgets(tiny_bundle, trace, ["25%"], ["lru"])
    assert problem in str(e.value)
