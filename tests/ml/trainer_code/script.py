"""A command trainer: parameters as arguments and environment, metrics as JSON lines."""

import json
import os
import sys

import numpy as np

alpha = float(sys.argv[sys.argv.index("--alpha") + 1])
assert float(os.environ["PARAM_C"]) == alpha
assert json.loads(open(os.environ["TRAINER_PARAMS"]).read())["C"] == alpha
data = np.load(os.environ["TRAINER_DATA"])
y, X_eval = data["y"], data["X_eval"]
steps = int(os.environ["TRAINER_STEPS"])
majority = np.bincount(y).argmax()
for step in range(steps):
    print(json.dumps({"step": step, "accuracy": 0.3 + 0.1 * step}), flush=True)
    print("not a metrics line", flush=True)
with open(os.environ["TRAINER_PREDICTIONS"], "w") as out:
    json.dump({"predictions": [int(majority)] * len(X_eval)}, out)
