#!/usr/bin/python3
"""One libtorrent (python3-libtorrent, Debian's 2.0.8) session as a separate process, for the
reference rows of contrib/bench_swarm.py: seed TORRENT from DIR, or download it into DIR
from the given peers. TCP only (uTP off), no DHT, LSD, UPnP or NAT-PMP: peers are joined
with connect_peer on loopback, exactly as PeerShare's are given with --peer.

    lt_transfer.py seed TORRENT DIR           prints "listening PORT", seeds until killed
    lt_transfer.py get TORRENT DIR HOST:PORT...  prints "first SECONDS" at the first verified
                                                  piece, "done SECONDS" when complete
"""
import sys
import time

import libtorrent as lt

mode, torrent, directory, *peers = sys.argv[1:]
settings = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    # Loopback peers share one IP; libtorrent would otherwise refuse the second connection.
    "allow_multiple_connections_per_ip": True,
    "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
}
session = lt.session(settings)
params = lt.add_torrent_params()
params.ti = lt.torrent_info(torrent)
params.save_path = directory
if mode == "seed":
    params.flags |= lt.torrent_flags.seed_mode  # trust the files, like `peershare share` after hashing
handle = session.add_torrent(params)
print(f"listening {session.listen_port()}", flush=True)
if mode == "seed":
    while True:
        time.sleep(1)
start = time.time()
for peer in peers:
    host, port = peer.rsplit(":", 1)
    handle.connect_peer((host, int(port)))
first = False
while True:
    status = handle.status()
    if status.is_seeding:
        break
    if not first and status.total_wanted_done > 0:
        # The first verified piece: contrib/bench_swarm.py times this line's arrival.
        print(f"first {time.time() - start:.3f}", flush=True)
        first = True
    time.sleep(0.01)
print(f"done {time.time() - start:.3f}", flush=True)
