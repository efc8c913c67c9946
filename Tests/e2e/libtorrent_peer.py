#!/usr/bin/python3
"""A real, independently written DHT node: libtorrent (python3-libtorrent, Debian's 2.0.8)
on 127.0.0.1, driven line by line on stdin, answering with JSON lines on stdout.

Commands:  add_node HOST PORT | get_peers HEX40 | announce HEX40 | nodes | quit
Events:    {"event": "listening", "port": N}
           {"event": "peers", "hash": HEX40, "peers": ["ip:port", ...]}
           {"event": "nodes", "count": N}

Setup notes (checked on Debian 12): only /usr/bin/python3 loads the module; DHT operation
alerts must be in the alert mask or dht_get_peers_reply_alert never arrives; nodes given as
dht_bootstrap_nodes act as routers and never enter the routing table, so add_dht_node is
how libtorrent learns a PeerShare node; 2.0.8's binding cannot build dht_announce()'s flags,
so announcing is done by adding a magnet link with a short dht_announce_interval."""
import json
import select
import sys
import tempfile
import time

import libtorrent as lt

port = int(sys.argv[1])
settings = {
    "listen_interfaces": f"127.0.0.1:{port}",
    "enable_dht": True,
    "dht_bootstrap_nodes": "",
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "dht_announce_interval": 2,
    # Loopback peers all share 127.0.0.1: allow them.
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_ignore_dark_internet": False,
    "alert_mask": lt.alert.category_t.all_categories,
}
session = lt.session(settings)
save_dir = tempfile.mkdtemp(prefix="lt-")


def emit(**event):
    print(json.dumps(event), flush=True)


emit(event="listening", port=session.listen_port())
deadline = time.time() + 300
while time.time() < deadline:
    ready, _, _ = select.select([sys.stdin], [], [], 0.1)
    if ready:
        line = sys.stdin.readline()
        if not line:
            break
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "add_node":
            session.add_dht_node((parts[1], int(parts[2])))
        elif parts[0] == "get_peers":
            session.dht_get_peers(lt.sha1_hash(bytes.fromhex(parts[1])))
        elif parts[0] == "announce":
            params = lt.parse_magnet_uri(f"magnet:?xt=urn:btih:{parts[1]}")
            params.save_path = save_dir
            session.add_torrent(params)
        elif parts[0] == "nodes":
            status = session.status()
            emit(event="nodes", count=status.dht_nodes)
        elif parts[0] == "quit":
            break
    for alert in session.pop_alerts():
        try:
            if isinstance(alert, lt.dht_get_peers_reply_alert):
                emit(event="peers", hash=str(alert.info_hash), peers=[f"{ip}:{p}" for ip, p in alert.peers()])
        except Exception as error:  # keep the node up; the test reads stderr if it must
            print(f"alert {type(alert).__name__}: {error}", file=sys.stderr, flush=True)
