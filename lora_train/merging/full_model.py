"""An adapter merged into a full model that plain transformers loads, verified against the adapter.

The base checkpoint is streamed tensor by tensor and the result written shard by shard, so merging needs about one
output shard of memory, never a full copy of the model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lora_train import artifacts
from lora_train.adapters import AdapterInfo, check_against_config, read_adapter
from lora_train.errors import UserError
from lora_train.merging import card as merge_card
from lora_train.merging.base_weights import BaseCheckpoint, Dequantizer, adapter_tensors, lora_updates
from lora_train.merging.shards import ShardWriter, parse_size
from lora_train.model import torch_dtype
from lora_train.schemas import DType, ModelConfig, QuantConfig, QuantMode
from lora_train.schemas.merge import MergeBase, MergeJob

REPORT = "merge_report.json"


def base_of(job: MergeJob, info: AdapterInfo) -> tuple[ModelConfig, QuantConfig]:
    """The base to merge into (base_model= wins over the adapter's lora_train.yaml) and the quantization it trained
    on."""
    quant = info.job.quant if info.job is not None else QuantConfig(mode=QuantMode.none)
    if job.base_model:
        trust = info.job.model.trust_remote_code if info.job is not None else False
        return ModelConfig(name=Path(job.base_model).name, name_or_path=job.base_model, revision=job.base_revision,
                           trust_remote_code=trust), quant
    if info.job is not None:
        return info.job.model, quant
    if info.base_name_or_path:
        return ModelConfig(name=info.base_name_or_path, name_or_path=info.base_name_or_path), quant
    raise UserError(f"adapter {info.name!r} does not say which base it was trained on; pass base_model=<folder or Hub id>")


def output_dtype(job: MergeJob, ckpt: BaseCheckpoint):
    import torch

    if job.dtype != DType.auto:
        return torch_dtype(job.dtype)
    return ckpt.dtype or torch.float32


def merge_into_model(job: MergeJob) -> Path:
    import torch

    if not job.output:
        raise UserError("output=...: where to write the merged model?")
    final = Path(job.output)
    artifacts.check_writable(final, job.overwrite, key="output")
    max_shard = parse_size(job.merge.max_shard_size)
    info = read_adapter(job.adapter, allow_pickle=job.allow_pickle)
    model_cfg, quant = base_of(job, info)
    ckpt = BaseCheckpoint.open(model_cfg, job.allow_pickle)
    check_against_config(info, ckpt.config, f"base {model_cfg.name_or_path!r}")
    updates = lora_updates(info, adapter_tensors(info, job.allow_pickle), ckpt)  # checks every module fits the base
    out_dtype = output_dtype(job, ckpt)

    base_kind = job.merge.base
    if quant.mode == QuantMode.none and base_kind == MergeBase.dequantized:
        base_kind = MergeBase.original  # trained on an unquantized base: nothing was rounded
    dequant = Dequantizer.load(ckpt, model_cfg, quant) if base_kind == MergeBase.dequantized else None
    print(f"merging {info.name} into {model_cfg.name_or_path} ({base_kind.value} weights"
          f"{f', {quant.mode.value}-rounded' if dequant else ''}) -> {final} [{str(out_dtype).removeprefix('torch.')}]",
          flush=True)

    staging = artifacts.staging_dir(final)
    try:
        writer = ShardWriter(staging, max_shard)
        merged = 0
        with torch.no_grad():
            for name, tensor in ckpt.tensors():
                if dequant is not None and dequant.has(name):
                    tensor = dequant.weight(name, tensor)
                if name in updates:
                    tensor = updates.pop(name)(tensor.float())
                    merged += 1
                if tensor.is_floating_point():
                    tensor = tensor.to(out_dtype)
                writer.add(name, tensor)
        if updates:  # lora_updates checked the names against the checkpoint's header; this is a last guard
            raise UserError(f"adapter {info.name!r}: modules {sorted(updates)[:3]} were not found while merging")
        shards = writer.close()
        ckpt.write_config(staging, out_dtype)
        _write_tokenizer(info, ckpt, staging)
        result = {"adapter": str(info.folder), "base": model_cfg.name_or_path, "revision": model_cfg.revision,
                  "merge_base": base_kind.value, "quant": quant.mode.value, "dtype": str(out_dtype).split(".")[-1],
                  "merged_modules": merged, "shards": shards, "size_bytes": writer.total_bytes}
        report = None
        if job.merge.verify:
            from lora_train.merging import verify

            report = verify.compare(info, ckpt.folder, model_cfg, quant, staging, job.merge)
            result["verification"] = report
            print(verify.table(report), flush=True)
        artifacts.write_json(staging / REPORT, result)
        (staging / "README.md").write_text(merge_card.render_merged(info, result))
        if report is not None and report["failed"] and not job.merge.force:
            raise UserError(
                f"verification failed: {'; '.join(report['failed'])}. The merged model was not written; "
                f"pass merge.force=true to write it anyway, or relax the merge.* thresholds")
        artifacts.publish(staging, final, job.overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"merged model written to {final}", flush=True)
    return final


def _write_tokenizer(info: AdapterInfo, ckpt: BaseCheckpoint, staging: Path) -> None:
    """The tokenizer the adapter was trained with (saved in its folder), else the base's."""
    from transformers import AutoTokenizer

    has_own = any((info.folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    source = info.folder if has_own else ckpt.folder
    try:
        AutoTokenizer.from_pretrained(source).save_pretrained(staging)
    except (OSError, ValueError) as e:
        print(f"note: no tokenizer written ({str(e).splitlines()[0]})", file=sys.stderr)
