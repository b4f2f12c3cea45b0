"""A small PyTorch CNN on scikit-learn's digits (8x8 images), tuned by tweakline.

``fit(params, ctx)`` trains for ``ctx.steps`` epochs, reports the validation accuracy after each
(ASHA stops weak trials early), saves the weights into ``ctx.model_dir`` and returns the
predictions for ``ctx.X_eval``. ``predict(model_dir, X)`` serves the saved model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULTS = {"lr": 1e-3, "batch_size": 64, "channels": 8, "dropout": 0.0}


def _net(channels: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * channels * 16, 10),
    )


def _images(X: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)


def _logits(net: nn.Module, X: np.ndarray) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(_images(X))


def fit(params, ctx):
    """Train, report each epoch's validation accuracy, save the model, predict ``ctx.X_eval``."""
    p = {**DEFAULTS, **params}
    torch.manual_seed(ctx.seed)
    net = _net(int(p["channels"]), float(p["dropout"]))
    optimiser = torch.optim.Adam(net.parameters(), lr=float(p["lr"]))
    X, y = _images(ctx.X), torch.as_tensor(np.asarray(ctx.y, dtype=np.int64))
    batch = int(p["batch_size"])
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(ctx.steps):
        net.train()
        order = torch.randperm(len(X))
        for start in range(0, len(X), batch):
            rows = order[start : start + batch]
            optimiser.zero_grad()
            loss_fn(net(X[rows]), y[rows]).backward()
            optimiser.step()
        if ctx.y_eval is not None:  # validation rows during trials (never the test split)
            accuracy = float((_logits(net, ctx.X_eval).argmax(1).numpy() == ctx.y_eval).mean())
            ctx.report(epoch, accuracy=accuracy)
    torch.save(net.state_dict(), Path(ctx.model_dir) / "weights.pt")
    (Path(ctx.model_dir) / "config.json").write_text(json.dumps({"channels": int(p["channels"]), "dropout": float(p["dropout"])}))
    probabilities = torch.softmax(_logits(net, ctx.X_eval), 1).numpy()
    return {"predictions": probabilities.argmax(1), "probabilities": probabilities}


def predict(model_dir, X):
    """The saved model's digit for each row of ``X`` (64 pixel values, 0-16)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    net = _net(config["channels"], config["dropout"])
    net.load_state_dict(torch.load(Path(model_dir) / "weights.pt", weights_only=True))
    return _logits(net, X).argmax(1).numpy()
