"""The smallest task: it always succeeds.

A task module is shipped to a node and run there as `__name__ == "__channelexec__"`, with a
`channel` to talk to dirt. It sends one results dict with at least a boolean `success`. dirt
also accepts a module that only defines `execute(**kwargs)` and returns that dict.
"""


def execute():
    return {"success": True}


if __name__ == "__channelexec__":
    channel.send(execute())
