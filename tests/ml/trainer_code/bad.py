"""Test trainers that fail the way users' code fails."""

import time

import numpy as np


def boom(params, ctx):
    raise ValueError("the learning rate is not a number")


def silent(params, ctx):
    return np.zeros(len(ctx.X_eval), dtype=ctx.y.dtype)  # reports nothing although steps > 1


def wrong_shape(params, ctx):
    return np.zeros(len(ctx.X_eval) - 3)


def slow(params, ctx):
    ctx.report(0, accuracy=0.5)
    time.sleep(600)


def greedy(params, ctx):
    blocks = []
    while True:
        blocks.append(np.ones(25 * 2**20 // 8))  # 25 MiB at a time, touched
        time.sleep(0.05)


def chatty(params, ctx):
    print("a user's print goes to the log, not into the protocol")
    print('{"report": 99, "metrics": {"accuracy": 1.0}}')  # not even this can forge a report
    return np.zeros(len(ctx.X_eval), dtype=ctx.y.dtype)
