import a_module_that_does_not_exist  # noqa: F401


def fit(params, ctx):
    return None
