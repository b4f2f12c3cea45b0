"""Test trainers: well-behaved ones (the platform's side of the contract is what is tested)."""

import numpy as np
from sklearn.linear_model import LogisticRegression


def fit(params, ctx):
    """A logistic regression that reports each step and says how many rows it was given."""
    model = LogisticRegression(C=params.get("C", 1.0), max_iter=300)
    model.fit(ctx.X, ctx.y)
    for step in range(ctx.steps):
        score = model.score(ctx.X_eval, ctx.y_eval) if ctx.y_eval is not None else 0.0
        ctx.report(step, accuracy=score - 0.01 * (ctx.steps - 1 - step), rows=len(ctx.X) + len(ctx.X_eval))
    (ctx.model_dir / "coef.npy").write_bytes(b"")
    np.save(ctx.model_dir / "coef.npy", model.coef_)
    np.save(ctx.model_dir / "intercept.npy", model.intercept_)
    np.save(ctx.model_dir / "classes.npy", model.classes_)
    return model


def predict(model_dir, X):
    """Serve what fit saved."""
    coef, intercept = np.load(model_dir / "coef.npy"), np.load(model_dir / "intercept.npy")
    return np.load(model_dir / "classes.npy")[np.argmax(np.asarray(X) @ coef.T + intercept, axis=1)]


def own_data(params, ctx):
    """A trainer that loads its own data and reports its own validation metric."""
    for step in range(ctx.steps):
        ctx.report(step, accuracy=0.5 + 0.1 * step)


def snoop(params, ctx):
    """Looks for the runner's bus and credentials and reports what it found (as metric counts)."""
    import os
    from pathlib import Path

    leaked = [k for k in os.environ if k.startswith(("TWEAKLINE", "NATS")) or "TLS" in k or "SECRET" in k]
    fds = [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    # The bus connection and the runner's pipe to its training child are sockets; the trainer's
    # only pipes are its own protocol (stdin/stdout, duplicated by the platform before user code).
    sockets, pipes = 0, 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        sockets += target.startswith("socket:")
        pipes += target.startswith("pipe:")
    certs = [v for v in os.environ.values() if Path(v, "tls.key").exists() or v.endswith((".key", ".crt"))]
    try:  # the parent's environment: readable only by the same user (or root); reported, see docs/trainers.md
        parent_env = int(b"TWEAKLINE" in Path(f"/proc/{os.getppid()}/environ").read_bytes())
    except OSError:
        parent_env = 0
    ctx.report(0, accuracy=1.0, env=len(leaked), sockets=sockets, pipes=pipes, certs=len(certs), parent_env=parent_env)
    return np.zeros(len(ctx.X_eval), dtype=ctx.y.dtype)
