"""One rank of a 2-process FSDP2 QLoRA run on CPU (gloo); started by tests/test_distributed.py.

Accelerate refuses FSDP without GPU, so this drives PyTorch's `fully_shard` directly on the
engine's own model preparation (`load_for_mode` with bf16 4-bit storage, then
`attach_lora(sharded=True)`): it checks that the sharded 4-bit storage loads and trains.
Writes rank-<N>.json in the folder given as argument.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from qlora_lab.finetune.parallel import parameters_digest
from qlora_lab.finetune.adapters import attach_lora
from qlora_lab.finetune.config import FinetuneConfig
from qlora_lab.finetune.prepare import load_for_mode

STEPS = 6


def local_bytes(model) -> int:
    """Bytes this rank stores: the local shard of each sharded (DTensor) parameter."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).untyped_storage().nbytes() for p in model.parameters())


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    config = FinetuneConfig(quant_storage="bf16", lora_dropout=0.0)
    torch.manual_seed(0)  # same adapters on every rank
    model, _ = load_for_mode(config, torch.device("cpu"))
    model = attach_lora(model, config, sharded=True)
    model.train()
    full = local_bytes(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(rank))
    losses = []
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    storage = {str(m.weight.dtype) for m in model.modules() if type(m).__name__ == "Linear4bit"}
    result = {"rank": rank, "full_bytes": full, "local_bytes": local_bytes(model), "losses": losses,
              "linear4bit_storage": sorted(storage), "digest": parameters_digest(model)}
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
