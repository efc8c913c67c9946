/* seccomp allowlist of the plugin profile: `peershare sandbox exec` and the plugin program
   it executes, in any language (measured with a Swift and a Python plugin). On top of
   common.h: executing the plugin, reading its files and libraries (Landlock: read-only, its
   own folder and the system's), and what interpreters ask at start-up. No socket(2). */

static const int peershare_seccomp_plugin[] = {
    __NR_execve, __NR_execveat, __NR_getdents64, __NR_statfs, __NR_fstatfs, __NR_chdir,
    __NR_fchdir, __NR_wait4, __NR_getresuid, __NR_getresgid, __NR_getgroups, __NR_sched_getparam,
    __NR_sched_getscheduler, __NR_getpgid, __NR_getsid,
    __NR_setsid, __NR_umask, __NR_mincore, __NR_capget,
#if defined(__x86_64__)
    __NR_getdents, __NR_vfork, __NR_getpgrp,
#endif
};
