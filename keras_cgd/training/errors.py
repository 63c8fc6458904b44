"""The one usage-error format of the training package."""


def usage_error(arg, expected, value):
    """`ValueError` "Invalid value received for argument `arg`. Expected ... Received: arg=..."."""
    return ValueError(f"Invalid value received for argument `{arg}`. Expected {expected}. Received: {arg}={value!r}")
