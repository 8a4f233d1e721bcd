"""Opening a bundle on the device: manifest, file presence and sizes, the manifest checked
against the model file's own tensor table, sampled block hashes (a few pages of each file the
build runs from; `contract.integrity`), optional full checksums."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract.checksums import check_fit
from contract.consistency import check_against_layout
from contract.errors import BundleError, ManifestError
from contract.gguf_layout import open_reader, read_layout
from contract.integrity import check_build
from contract.manifest import Build, Manifest, read_manifest
from runtime.bundles.versions import VersionLease, hold
from runtime.recurrent import recurrent_layers


@dataclass(frozen=True)
class OpenBundle:
    """A checked bundle and the build (GGUF or ONNX) the runtime will run.

    Opened through a pulled DEST, it holds a lease on the version it resolved until `close`
    (or `with open_bundle(...)`), so a pull never prunes the version while it is in use."""

    path: Path  # the real folder (symlinks resolved once, at open)
    manifest: Manifest
    build: Build
    opened_as: Path | None = None  # the path as given (e.g. a `pull` DEST symlink): the name
    lease: VersionLease | None = field(default=None, compare=False, repr=False)

    def close(self) -> None:
        """Let the version go (pruning may remove it once no reader holds it)."""
        if self.lease is not None:
            self.lease.close()

    def __enter__(self) -> OpenBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model_path(self) -> Path:
        return self.path / self.build.model_file

    @property
    def expert_path(self) -> Path:
        """The file whose bytes the expert offsets address (GGUF: the model; ONNX: its data)."""
        return self.path / self.build.expert_file

    @property
    def expert_bytes_total(self) -> int:
        n = self.manifest.shape.n_experts
        return sum(x.expert_bytes * n for x in self.build.expert_layers)

    @property
    def name(self) -> str:
        return (self.opened_as or self.path).name


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache costs per token, read from the GGUF header."""

    n_layers: int
    n_head_kv: int
    key_length: int
    value_length: int

    def kv_bytes(self, n_ctx: int, bytes_per_value: float = 2.0) -> int:
        """K and V caches for n_ctx tokens; bytes_per_value follows the cache type (f16: 2)."""
        per_token = self.n_layers * self.n_head_kv * (self.key_length + self.value_length)
        return int(n_ctx * per_token * bytes_per_value)


def open_bundle(path: str | Path, verify: bool = False, fmt: str | None = None) -> OpenBundle:
    """Check a bundle is complete and its manifest agrees with the model file before an engine
    touches it; `fmt` picks the build ("gguf" or "onnx"; None: the bundle's primary one);
    `verify` re-hashes every file instead of the sampled blocks."""
    given = Path(path)
    if not given.is_dir():
        raise BundleError(f"{given}: not a bundle directory")
    # A pulled bundle is a symlink `edgemoe pull` may swap at any moment: resolved once, and
    # that version held (a lease) so every check here and every file the engine opens later
    # belong to it, until the bundle is closed.
    lease = hold(given)
    path = lease.path if lease is not None else given.resolve()
    try:
        return _checked(given, path, verify, fmt, lease)
    except BaseException:
        if lease is not None:
            lease.close()
        raise


def _checked(given: Path, path: Path, verify: bool, fmt: str | None,
             lease: VersionLease | None) -> OpenBundle:
    try:
        manifest = read_manifest(path)
    except ManifestError as e:
        raise BundleError(str(e)) from None
    for name, entry in manifest.files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: file '{name}' listed in the manifest is missing")
        if f.stat().st_size != entry.bytes:
            raise BundleError(
                f"{f}: {f.stat().st_size} bytes but the manifest says {entry.bytes} (truncated?)"
            )
    try:
        build = manifest.build(fmt)
    except ManifestError as e:
        raise BundleError(f"{path}: {e}") from None
    model = path / build.model_file
    if build.format == "gguf":
        check_against_layout(manifest, read_layout(model), model, build)
    else:
        from contract.onnx_layout import check_onnx_build

        check_onnx_build(manifest, build, path)
    check_fit(manifest, str(path / "manifest.json"))
    if verify:
        from contract.verify import verify_bundle

        report = verify_bundle(path)
        if not report.ok:
            raise BundleError(f"{path}: " + "; ".join(report.problems))
    else:
        check_build(path, manifest, build)  # data damage that kept the size: one clear line
    return OpenBundle(path, manifest, build, opened_as=given, lease=lease)


def attention_shape(model_path: Path) -> AttentionShape:
    if model_path.suffix == ".onnx":
        from contract.onnx_layout import onnx_attention

        n_layers, n_head_kv, head_dim = onnx_attention(model_path)
        return AttentionShape(n_layers, n_head_kv, head_dim, head_dim)
    reader = open_reader(model_path)

    def get(key: str, default=None):
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    try:
        arch = get("general.architecture")
        n_head = get(f"{arch}.attention.head_count")
        n_head = int(max(n_head) if isinstance(n_head, list) else n_head)
        n_embd = int(get(f"{arch}.embedding_length"))
        head = n_embd // n_head
        n_layers = int(get(f"{arch}.block_count"))
        n_head_kv = get(f"{arch}.attention.head_count_kv", n_head)
        per_layer = n_head_kv if isinstance(n_head_kv, list) else [n_head_kv] * n_layers
        # Hybrid models cache K and V in their attention layers only (runtime/recurrent.py).
        recurrent = set(recurrent_layers(get, n_layers))
        kv_heads = [int(h) for i, h in enumerate(per_layer[:n_layers])
                    if int(h) > 0 and i not in recurrent]
        shape = AttentionShape(
            n_layers=len(kv_heads),
            n_head_kv=max(kv_heads, default=0),
            key_length=int(get(f"{arch}.attention.key_length", head)),
            value_length=int(get(f"{arch}.attention.value_length", head)),
        )
    except (TypeError, ValueError, ZeroDivisionError, IndexError, UnicodeDecodeError) as e:
        raise BundleError(f"{model_path}: attention metadata unreadable ({e})") from None
    if min(shape.n_layers, shape.n_head_kv, shape.key_length, shape.value_length) <= 0:
        raise BundleError(f"{model_path}: attention metadata out of range ({shape})")
    return shape
