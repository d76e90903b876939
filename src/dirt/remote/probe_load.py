"""Probe shipped with ``gateway.remote_exec``: sends ``[l1, l5, l15]`` and the CPU count.

Stdlib only. The agent answers ("load",) itself; this is for a gateway without an agent.
"""

import os

if __name__ == "__channelexec__":
    channel.send((list(os.getloadavg()), os.cpu_count()))  # noqa: F821
