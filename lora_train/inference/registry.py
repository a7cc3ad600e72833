"""One base model in memory, many LoRA adapters on it, chosen by name.

`MultiAdapterModel` loads the base once and puts adapters on it with PEFT (`load_adapter` / `delete_adapter`), so a
batch whose rows use different adapters runs in one forward pass (PEFT's `adapter_names`). Adapters are validated
against the base before any weight loads, kept resident up to a limit with least-recently-used eviction, and every
change to the model happens under one lock, so a server thread generating and an admin request loading an adapter
never see a half-changed model.

Security: an adapter is addressed by a *name*, never a path. A name is one folder under `adapters_dir`; `../`,
absolute paths and symlinks that lead out of `adapters_dir` are refused, and only safetensors weights load unless
`allow_pickle` (a pickle can run code when loaded).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from pathlib import Path

from lora_train.adapters import AdapterInfo, check_against_config, check_against_model, read_adapter
from lora_train.errors import UserError
from lora_train.model import load_base, load_tokenizer, resolve_model
from lora_train.schemas import ModelConfig, QuantConfig

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]{0,127}")  # the names lora-train gives run folders
BASE_ALIAS = "base"  # always means "no adapter", next to the base model's own name
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class UnknownAdapter(UserError):
    """The name is valid but no such adapter exists (the server answers 404)."""


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"adapter name {name!r} is not valid: use the adapter's folder name (letters, digits and "
                        ". _ - + = , ; no path)")
    return name


def escapes(folder: Path, root: Path) -> Path | None:
    """The first of the folder and its files that resolves outside `root` (through a symlink), else None."""
    root = root.resolve()
    for p in [folder, *(folder.iterdir() if folder.is_dir() else [])]:
        if not p.resolve().is_relative_to(root):
            return p
    return None


def list_adapter_folders(adapters_dir: Path) -> list[Path]:
    """Sub-folders that hold an adapter. Hidden staging folders of a training run in progress are skipped, and so
    are folders that lead outside adapters_dir through a symlink."""
    if not adapters_dir.is_dir():
        return []
    found = []
    for p in sorted(adapters_dir.iterdir()):
        if p.name.startswith(".") or not (p / "adapter_config.json").is_file():
            continue
        if escapes(p, adapters_dir) is not None:
            log.warning("skipping %s: it leads outside %s (symlink)", p, adapters_dir)
            continue
        found.append(p)
    return found


def infer_base(folders: list[Path], allow_pickle: bool = False) -> tuple[ModelConfig, QuantConfig]:
    """The base (and its quantization) the adapters were trained on, from their saved lora_train.yaml."""
    jobs = [(f, info.job) for f in folders if (info := read_adapter(f, allow_pickle)).job is not None]
    if not jobs:
        where = ", ".join(str(f) for f in folders) or "no adapter folder found"
        raise UserError(f"cannot tell which base model to load ({where}): no adapter has a lora_train.yaml; "
                        "pass model=<group> or model.name_or_path=... (and quant=...)")
    counts = Counter(job.model.name_or_path for _, job in jobs)
    chosen, _ = counts.most_common(1)[0]
    if len(counts) > 1:
        log.warning("adapters were trained on different bases %s; loading %s (adapters that do not fit it will be "
                    "refused when loaded)", dict(counts), chosen)
    job = next(job for _, job in jobs if job.model.name_or_path == chosen)
    return job.model, job.quant


def selected_base(sel) -> tuple[ModelConfig, QuantConfig]:
    """A GenerateJob's / ServeJob's base: `model`/`quant` when given, else what the adapters were trained on."""
    folders = list_adapter_folders(Path(sel.adapters_dir)) + [Path(p) for p in sel.adapter_paths]
    model_cfg, quant_cfg = sel.model, sel.quant
    if model_cfg is None or quant_cfg is None:
        if model_cfg is None and not folders:
            raise UserError(f"adapters_dir={sel.adapters_dir!r} holds no adapter and no model=... was given: "
                            "nothing tells which base model to load")
        inferred = infer_base(folders, sel.allow_pickle) if folders else (model_cfg, QuantConfig())
        model_cfg = model_cfg or inferred[0]
        quant_cfg = quant_cfg or inferred[1]
    return model_cfg, quant_cfg


class AdapterCatalog:
    """The adapters' names and folders, without any model: what a server front that holds no model (the Ray
    ingress, lora_train/inference/cluster) needs to answer names, cards and 404s exactly as the engine does."""

    def __init__(self, base_name: str, adapters_dir: str | Path | None = None, allow_pickle: bool = False):
        self.base_name = base_name
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        self.allow_pickle = allow_pickle
        # `_meta` guards only the name tables, so listing adapters or resolving a name never waits for a batch
        # (the server's event loop resolves names; it must not stall behind a long generation).
        self._meta = threading.Lock()
        self._known: dict[str, Path] = {}  # name -> folder, for adapters that may be loaded

    # ---- names ---------------------------------------------------------------------------------------------

    def is_base(self, name: str) -> bool:
        return name in (BASE_ALIAS, self.base_name)

    def scan(self) -> list[str]:
        """Register every adapter folder under adapters_dir (new folders appear, loaded ones stay)."""
        with self._meta:
            if self.adapters_dir is not None:
                for folder in list_adapter_folders(self.adapters_dir):
                    if NAME_RE.fullmatch(folder.name) and not self.is_base(folder.name):
                        self._known.setdefault(folder.name, folder)
            return sorted(self._known)

    def register_path(self, path: str | Path) -> str:
        """An adapter folder given explicitly by the operator (config), anywhere on disk; named after the folder."""
        folder = Path(path).expanduser()
        name = check_name(folder.resolve().name)
        if self.is_base(name):
            raise UserError(f"adapter folder {folder}: the name {name!r} is reserved for the base model; rename it")
        with self._meta:
            if name in self._known and self._known[name].resolve() != folder.resolve():
                raise UserError(f"adapter name {name!r} is used by both {self._known[name]} and {folder}")
            read_adapter(folder, self.allow_pickle)  # fail now, not on first use
            self._known[name] = folder
        return name

    def folder_of(self, name: str) -> Path:
        """The folder of a named adapter, which must stay inside adapters_dir (symlinks included)."""
        check_name(name)
        if self.is_base(name):
            raise UserError(f"{name!r} names the base model, not an adapter")
        with self._meta:
            if name in self._known:
                return self._known[name]
        if self.adapters_dir is None:
            raise UnknownAdapter(f"adapter {name!r} does not exist")
        folder = self.adapters_dir / name
        if not folder.exists():
            raise UnknownAdapter(f"adapter {name!r} does not exist under adapters_dir")  # no server path to clients
        bad = escapes(folder, self.adapters_dir)
        if bad is not None:
            raise UserError(f"adapter {name!r}: {bad.name} leads outside {self.adapters_dir} (symlink); refused")
        with self._meta:
            self._known[name] = folder
        return folder

    def names(self) -> list[str]:
        return self.scan()

    def is_known(self, name: str) -> bool:
        """A registered adapter's name (no disk access: safe for metric labels)."""
        with self._meta:
            return name in self._known


class MultiAdapterModel(AdapterCatalog):
    """The base model, its tokenizer, and the adapters registered on it. Thread-safe."""

    def __init__(self, model_cfg: ModelConfig, quant_cfg: QuantConfig, adapters_dir: str | Path | None = None,
                 max_resident: int = 8, allow_pickle: bool = False):
        import torch

        if max_resident < 1:
            raise UserError(f"max_resident_adapters={max_resident} must be at least 1")
        super().__init__(model_cfg.name, adapters_dir, allow_pickle)
        self.model_cfg, self.quant_cfg = model_cfg, quant_cfg
        self.max_resident = max_resident
        # `lock` guards the model: held while a batch generates and while an adapter loads or unloads.
        self.lock = threading.RLock()
        path = resolve_model(model_cfg)
        self.tokenizer = load_tokenizer(path, model_cfg)
        self.tokenizer.padding_side = "left"  # generation appends to the right end of every row
        device_map = {"": 0} if torch.cuda.is_available() else None
        self.base = load_base(path, model_cfg, quant_cfg, device_map=device_map)
        self.base.eval()
        self.model = self.base  # becomes a PeftModel when the first adapter loads
        self._resident: OrderedDict[str, AdapterInfo] = OrderedDict()  # loaded adapters, least recently used first
        # PEFT's name for each resident adapter. Folder names may hold "." (not allowed in a torch ModuleDict key)
        # or be a substring of "lora_" (PEFT then may re-initialize the weights on load), so PEFT gets its own.
        self._peft_names: dict[str, str] = {}
        self._loads = 0
        self.evictions = 0  # adapters unloaded to make room for another (not explicit unloads)
        self.scan()

    @classmethod
    def from_config(cls, sel) -> "MultiAdapterModel":
        """From a GenerateJob / ServeJob: the base from `model`/`quant`, else from the adapters' saved config."""
        model_cfg, quant_cfg = selected_base(sel)
        host = cls(model_cfg, quant_cfg, Path(sel.adapters_dir), sel.max_resident_adapters, sel.allow_pickle)
        for p in sel.adapter_paths:
            host.register_path(p)
        return host

    @property
    def loads(self) -> int:
        """Adapter loads since start (reloads after an eviction included)."""
        return self._loads

    def resident(self) -> list[str]:
        with self._meta:
            return list(self._resident)

    # ---- loading -------------------------------------------------------------------------------------------

    def load(self, name: str) -> AdapterInfo:
        """Make `name` resident (validated first), evicting the least recently used adapter beyond the limit."""
        with self.lock:
            if name in self._resident:
                with self._meta:
                    self._resident.move_to_end(name)
                return self._resident[name]
            folder = self.folder_of(name)
            info = read_adapter(folder, self.allow_pickle)
            label = f"the loaded base {self.model_cfg.name_or_path!r}"
            check_against_config(info, self.base.config, label)
            check_against_model(info, self.base, label)
            if info.job is not None and info.job.model.name_or_path != self.model_cfg.name_or_path:
                log.warning("adapter %r was trained on %s; it fits the shapes of %s", name,
                            info.job.model.name_or_path, self.model_cfg.name_or_path)
            while len(self._resident) >= self.max_resident:
                self._unload(next(iter(self._resident)))
                self.evictions += 1
            self._loads += 1
            self._attach(f"adapter{self._loads}", folder)
            with self._meta:
                self._peft_names[name] = f"adapter{self._loads}"
                self._resident[name] = info
            log.info("adapter %r loaded from %s", name, folder)
            return info

    def _attach(self, peft_name: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=peft_name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.base, str(folder), adapter_name=peft_name,
                                                       is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"adapter {folder.name!r}: PEFT could not load {folder}: {e}") from e
        self.model.eval()

    def unload(self, name: str) -> bool:
        """Free an adapter's memory; False when it was not resident. It stays known and loads again on use."""
        with self.lock:
            if name not in self._resident:
                return False
            self._unload(name)
            return True

    def _unload(self, name: str) -> None:
        if len(self._resident) == 1:  # the last one: take PEFT's layers out, back to the plain base
            self.model.unload()
            self.model = self.base
        else:
            self.model.delete_adapter(self._peft_names[name])
            if self.model.active_adapter not in self.model.peft_config:  # PEFT leaves a deleted one active
                self.model.set_adapter(next(iter(self.model.peft_config)), inference_mode=True)
            # PEFT's delete_adapter makes the remaining adapters trainable again (requires_grad), and PEFT's mixed
            # batch then fails ("a view of a leaf Variable that requires grad is being used in an in-place
            # operation"): served adapters never train.
            self.model.requires_grad_(False)
        with self._meta:
            del self._resident[name], self._peft_names[name]
        log.info("adapter %r unloaded", name)

    @contextmanager
    def using(self, names: list[str]):
        """Hold the model with these adapters (or the base) resident; yields PEFT's per-row `adapter_names`.

        The lock is held throughout, so nothing is evicted or added while a batch runs.
        """
        wanted = {n for n in names if not self.is_base(n)}
        if len(wanted) > self.max_resident:
            raise UserError(f"a batch needs {len(wanted)} adapters but max_resident_adapters={self.max_resident}")
        with self.lock:
            for n in wanted:  # most recent first, so loading one cannot evict another of this batch
                if n in self._resident:
                    with self._meta:
                        self._resident.move_to_end(n)
            for n in wanted:
                self.load(n)
            dora = [self._peft_names[n] for n in wanted if self._resident[n].peft_config.get("use_dora")]
            with _dora_rows_allowed(self.model, dora):
                yield [PEFT_BASE if self.is_base(n) else self._peft_names[n] for n in names]


@contextmanager
def _dora_rows_allowed(model, peft_names: list[str]):
    """DoRA adapters in a mixed batch. PEFT computes a DoRA row of a mixed batch through its DoRA variant
    (LoraLayer._mixed_batch_forward), but its argument check still refuses `adapter_names` with DoRA, reading a
    per-layer `use_dora` flag that nothing else reads any more (PEFT: "kept for backwards compatibility"). The flag is
    lowered for these adapters while the batch runs, under the model lock; tests/training/test_variants.py checks
    the rows against PEFT's own single-adapter forward."""
    flagged = [(m, n) for m in (model.modules() if peft_names else []) for n in peft_names
               if isinstance(getattr(m, "use_dora", None), dict) and m.use_dora.get(n)]
    for m, n in flagged:
        m.use_dora[n] = False
    try:
        yield
    finally:
        for m, n in flagged:
            m.use_dora[n] = True
