"""One rank of a 2-process FSDP2 QLoRA run on CPU (gloo); started by tests/test_distributed.py.

Accelerate refuses FSDP without GPU, so this drives PyTorch's `fully_shard` directly on the
engine's own model preparation (`load_for_mode` with bf16 4-bit storage, then
`attach_lora(sharded=True)`): it checks that the sharded 4-bit storage loads and trains,
and reports the bytes this rank holds, item by item (frozen base, adapters, their gradients,
AdamW's moments, the 4-bit quantization constants), for the memory estimator to be checked
against. Writes rank-<N>.json in the folder given as argument.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from qlora_lab.finetune.parallel import parameters_digest
from qlora_lab.finetune.adapters import attach_lora
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.prepare import load_for_mode
from qlora_lab.model.llama_shapes import ModelShape

STEPS = 6


def local_bytes(model) -> int:
    """Bytes this rank stores: the local shard of each sharded (DTensor) parameter."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).untyped_storage().nbytes() for p in model.parameters())


def shard_bytes(tensors) -> int:
    """Bytes of this rank's local shards, padding excluded (what the estimator divides)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def quant_constant_bytes(model) -> int:
    """Bytes of the 4-bit layers' per-block constants (absmax, nested absmax): never sharded.

    The fixed tables (16-value code, 256-value nested code, offset) are left out, as the
    estimator's bits per weight leaves them out.
    """
    states = [m.weight.quant_state for m in model.modules()  # bitsandbytes' layers, not PEFT's wrappers
              if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")]
    return sum(s.absmax.numel() * s.absmax.element_size()
               + (s.state2.absmax.numel() * s.state2.absmax.element_size() if s.nested else 0) for s in states)


def held_bytes(model, optimizer) -> dict[str, int]:
    """What this rank holds after a step, split as the estimator splits it."""
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    moments = [t for state in optimizer.state.values() for key, t in state.items() if key in ("exp_avg", "exp_avg_sq")]
    return {"frozen": shard_bytes(p for p in params if not p.requires_grad), "adapters": shard_bytes(trained),
            "gradients": shard_bytes(p.grad for p in trained if p.grad is not None), "optimizer": shard_bytes(moments)}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = FinetuneConfig(quant_storage="bf16", lora_dropout=0.0)
    torch.manual_seed(0)  # same adapters on every rank
    model, _ = load_for_mode(config, torch.device("cpu"))
    model = attach_lora(model, config, sharded=True)
    model.train()
    full = local_bytes(model)
    constants = quant_constant_bytes(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(rank))
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()  # first: the last step's gradients stay to be measured
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    storage = {str(m.weight.dtype) for m in model.modules() if type(m).__name__ == "Linear4bit"}
    result = {"rank": rank, "full_bytes": full, "local_bytes": local_bytes(model), "losses": losses,
              "linear4bit_storage": sorted(storage), "digest": parameters_digest(model),
              "held": held_bytes(model, optimizer), "quant_constants": constants, "lora_r": config.lora_r,
              "target_modules": list(config.target_modules), "shape": asdict(ModelShape.from_config(model.config))}
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
