"""Model checkpoints with versions: train a small PyTorch network, save a checkpoint after every epoch as
a new version of one object (safetensors, never pickle), then pick the best epoch from the history and
load exactly that version into a fresh model.

    pip install 'microblob[torch]'
    python examples/torch_checkpoint.py [STORE_URI]    # default: ./microblob.db (or $MICROBLOB_URI)
"""

from __future__ import annotations

import sys
import uuid

import torch
from torch import nn

import microblob
from microblob.torch import load_torch_model, save_or_update_torch_model


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 4 - 2
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def main(uri: str | None = None) -> None:
    torch.manual_seed(0)
    x_train, y_train = data(512, seed=1)
    x_val, y_val = data(128, seed=2)
    model = Regressor()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model_id = f"regressor-{uuid.uuid4().hex[:8]}"

    with microblob.connect(uri) as store, microblob.Workflow(name="torch_checkpoint", store=store) as wf:
        print(f"store: {store.uri}, workflow {wf.workflow_id[:8]}…")
        for epoch in range(1, 7):
            model.train()
            for start in range(0, len(x_train), 64):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x_train[start:start + 64]), y_train[start:start + 64])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
            save_or_update_torch_model(model, model_id, store=store, task_id=f"epoch-{epoch}",
                                       custom_metadata={"epoch": epoch, "val_loss": val_loss}, control_version=True)
            print(f"epoch {epoch}: val_loss {val_loss:.4f} -> saved {model_id} v{epoch - 1}")

        # The history holds every checkpoint's metadata (not its bytes): choose the best one there.
        history = store.get_object_history(model_id)
        best = min(history, key=lambda h: h["custom_metadata"]["val_loss"])
        print(f"{len(history)} versions; best is v{best['version']} (epoch {best['custom_metadata']['epoch']}, "
              f"val_loss {best['custom_metadata']['val_loss']:.4f})")

        # Load exactly that version into a fresh model and check it predicts what was measured.
        fresh = Regressor()
        meta = load_torch_model(fresh, model_id, version=best["version"], store=store)
        fresh.eval()
        with torch.no_grad():
            reloaded_loss = nn.functional.mse_loss(fresh(x_val), y_val).item()
        matches = reloaded_loss == best["custom_metadata"]["val_loss"]
        print(f"loaded v{meta['version']} ({meta['size']} bytes, {meta['content_type']}) into a fresh model: "
              f"val_loss {reloaded_loss:.4f}, matches the checkpoint: {matches}")

        # Checkpoints are ml_model objects: query them by their metrics.
        good = store.ml_model_query({"custom_metadata.val_loss": {"$lt": 0.1}, "workflow_id": wf.workflow_id})
        print(f"models in this workflow with latest val_loss < 0.1: {[m.object_id for m in good]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
