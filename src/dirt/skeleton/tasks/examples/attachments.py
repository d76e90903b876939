"""A task that attaches a file to its results.

Each attachment is {"filename", "contents", "link_name"}; contents may be str or bytes. dirt
stores it apart from the results and links it from the record's page under `link_name`.
"""

import platform
import time


def execute():
    log = f"built on {platform.node()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\nall good\n"
    return {
        "success": True,
        "attachments": [{"filename": "build.log", "contents": log, "link_name": "Build log"}],
    }


if __name__ == "__channelexec__":
    channel.send(execute())
