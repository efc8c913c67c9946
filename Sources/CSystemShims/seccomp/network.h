/* seccomp allowlist of the network-only profile: discovery, nat and transfer. On top of
   common.h: their own sockets, which socket(2) may create only for AF_INET and AF_INET6 (no
   Unix sockets — the user's ssh-agent, the supervisor's control socket — and no netlink). */

static const int peershare_seccomp_network[] = {
    __NR_bind, __NR_listen, __NR_accept, __NR_accept4, __NR_connect, __NR_setsockopt,
    __NR_getsockopt, __NR_getsockname, __NR_getpeername, __NR_sendmmsg, __NR_recvmmsg,
};
