"""HAProxy's numbers for one pooler host, from the TOML's max_client_conn and the host's instance count: the
values the haproxy role writes into haproxy.cfg and its unit's drop-in, unchanged."""

from __future__ import annotations

#: Global connections beyond the clients: the stats/metrics page and the admin socket.
GLOBAL_MAXCONN_MARGIN = 100
#: Descriptors beyond two per client session: listeners, health checks, logs, the master's sockets.
FD_MARGIN = 1000


def haproxy_limits(max_client_conn: int, instances: int) -> dict[str, int]:
    """``server_maxconn``: one instance takes at most max_client_conn clients (HAProxy queues the next ones
    instead of pgbouncer refusing them); ``frontend_maxconn``: that times the host's instances;
    ``global_maxconn``: plus GLOBAL_MAXCONN_MARGIN; ``file_descriptor_limit`` (LimitNOFILE): two descriptors
    per client session (the client's and the instance's side) plus FD_MARGIN; ``nbthread``: one thread per
    two instances, at least one (docs/benchmarks.md: more threads compete with the instances for the cores).
    """
    frontend = max_client_conn * instances
    return {
        "server_maxconn": max_client_conn,
        "frontend_maxconn": frontend,
        "global_maxconn": frontend + GLOBAL_MAXCONN_MARGIN,
        "file_descriptor_limit": 2 * frontend + FD_MARGIN,
        "nbthread": max(1, instances // 2),
    }
