/* seccomp allowlist: what every confined PeerShare process may call (the Swift runtime,
   Foundation, Dispatch and SwiftNIO at work, measured with strace over share/get/limit runs
   with every pipeline stage, then widened by the calls the same libraries make on rarer
   paths: errors, timeouts, thread exits). Everything not listed in this file or in the
   profile's own file fails with EPERM. socket, ioctl, clone and clone3 are not here: their
   arguments are checked (shims.c). Included once, by shims.c. */

static const int peershare_seccomp_common[] = {
    /* memory */
    __NR_mmap, __NR_munmap, __NR_mprotect, __NR_mremap, __NR_madvise, __NR_brk,
    /* threads and their synchronisation */
    __NR_futex, __NR_set_robust_list, __NR_get_robust_list, __NR_rseq, __NR_set_tid_address,
    __NR_sched_yield, __NR_sched_getaffinity, __NR_getpriority, __NR_setpriority, __NR_membarrier,
    __NR_exit, __NR_exit_group, __NR_restart_syscall,
    /* signals: own handlers, own threads (abort raises with tgkill); no kill(2) of others */
    __NR_rt_sigaction, __NR_rt_sigprocmask, __NR_rt_sigreturn, __NR_sigaltstack, __NR_tgkill,
    /* identity and time */
    __NR_getpid, __NR_getppid, __NR_gettid, __NR_getuid, __NR_geteuid, __NR_getgid, __NR_getegid,
    __NR_clock_gettime, __NR_clock_getres, __NR_clock_nanosleep, __NR_nanosleep, __NR_gettimeofday,
    __NR_getrandom, __NR_uname, __NR_sysinfo, __NR_prlimit64, __NR_getrusage, __NR_prctl,
    /* descriptors it holds: the pipes to the supervisor and the data channel */
    __NR_read, __NR_write, __NR_readv, __NR_writev, __NR_pread64, __NR_pwrite64, __NR_close,
    __NR_fcntl, __NR_dup, __NR_dup3, __NR_lseek, __NR_fstat, __NR_newfstatat, __NR_statx,
    __NR_sendmsg, __NR_recvmsg, __NR_sendto, __NR_recvfrom, __NR_shutdown,
    __NR_ppoll, __NR_pselect6, __NR_epoll_create1, __NR_epoll_ctl, __NR_epoll_pwait, __NR_eventfd2,
    __NR_timerfd_create, __NR_timerfd_settime, __NR_timerfd_gettime, __NR_pipe2,
    /* paths: opened only where Landlock allows (nowhere, for the network workers) */
    __NR_openat, __NR_readlinkat, __NR_getcwd, __NR_faccessat, __NR_faccessat2,
#if defined(__x86_64__)
    __NR_arch_prctl, __NR_poll, __NR_select, __NR_epoll_wait, __NR_epoll_create, __NR_dup2,
    __NR_stat, __NR_lstat, __NR_open, __NR_access, __NR_readlink, __NR_getrlimit, __NR_time,
    __NR_pipe, __NR_eventfd,
#endif
};

/* ioctl: only these requests (non-blocking mode, bytes waiting, close-on-exec, and the
   "is this a terminal" probe isatty makes). Never TIOCSTI or any other terminal write. */
static const unsigned long peershare_seccomp_ioctls[] = {
    FIONBIO, FIONREAD, FIOCLEX, FIONCLEX, TCGETS, TIOCGWINSZ,
};
