"""A command trainer: a plain script that knows nothing about tweakline.

It reads its parameters from the command line (tweakline fills ``{alpha}`` and ``{epochs}``), the
data from ``$TRAINER_DATA`` (numpy .npz: X, y, X_eval, y_eval), prints one JSON line per epoch,
writes predictions for X_eval to ``$TRAINER_PREDICTIONS`` and its model into ``$TRAINER_MODEL_DIR``.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from sklearn.linear_model import SGDClassifier

parser = argparse.ArgumentParser()
# The script's own default is a cautious guess (strong regularisation: about 0.90 accuracy on
# digits); the best alpha is two orders of magnitude smaller, which is what the tuning finds.
parser.add_argument("--alpha", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=int(os.environ.get("TRAINER_STEPS", "5")))
args = parser.parse_args()

data = np.load(os.environ["TRAINER_DATA"])
X, y, X_eval = data["X"] / 16.0, data["y"], data["X_eval"] / 16.0
y_eval = data["y_eval"] if "y_eval" in data.files else None
model = SGDClassifier(alpha=args.alpha, random_state=0)
classes = np.unique(y)
for epoch in range(args.epochs):
    model.partial_fit(X, y, classes=classes)
    line = {"step": epoch}
    if y_eval is not None:
        line["accuracy"] = float((model.predict(X_eval) == y_eval).mean())
    print(json.dumps(line), flush=True)

model_dir = Path(os.environ["TRAINER_MODEL_DIR"])
np.save(model_dir / "coef.npy", model.coef_)
np.save(model_dir / "intercept.npy", model.intercept_)
np.save(model_dir / "classes.npy", model.classes_)
Path(os.environ["TRAINER_PREDICTIONS"]).write_text(json.dumps({"predictions": model.predict(X_eval).tolist()}))
