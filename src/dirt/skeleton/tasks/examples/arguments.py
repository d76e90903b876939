"""A task that takes arguments: the task's `kwargs` arrive through `channel.receive()`.

Submit it with `dirt submit r1 -t examples.arguments --kwargs '{"cat": "meow", "dog": "woof"}'`.
"""


def execute(cat, dog):
    return {"success": True, "cat": cat, "dog": dog}


if __name__ == "__channelexec__":
    kwargs = channel.receive()
    channel.send(execute(**kwargs))
