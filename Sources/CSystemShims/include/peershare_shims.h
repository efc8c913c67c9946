#ifndef PEERSHARE_SHIMS_H
#define PEERSHARE_SHIMS_H
#include <sys/types.h>

/// prctl(PR_SET_PDEATHSIG, sig): the kernel sends `sig` to this process when its parent dies.
int peershare_set_parent_death_signal(int sig);

/// Starts `path` with `argv`/`envp` (NULL-terminated) in a new process group, with
/// `child_fd` placed on descriptor `target_fd`, SIGINT/SIGTERM/SIGPIPE reset to their
/// defaults and an empty signal mask. Returns the pid, or -1 with errno set.
pid_t peershare_spawn(const char *path, char *const argv[], char *const envp[], int child_fd, int target_fd);

/// The same with several descriptors: child_fds[i] is placed on target_fds[i]. Standard
/// descriptors (0, 1, 2) not among the targets are /dev/null in the child, and every
/// descriptor above the highest target is closed: the child inherits nothing else.
pid_t peershare_spawn_fds(
    const char *path, char *const argv[], char *const envp[], const int *child_fds, const int *target_fds, int count);

/// memfd_create(name, MFD_CLOEXEC): an anonymous shared-memory file (the chunk pool).
/// Returns the descriptor, or -1 with errno set.
int peershare_memfd(const char *name);
/* syncfs(2): flushes the filesystem that holds `fd`, in one call. */
int peershare_syncfs(int fd);

/// Keeps chunk-sized allocations in the heap (no mmap/munmap, no trimming per buffer).
void peershare_tune_allocator(void);

/* Landlock filesystem rights (include/uapi/linux/landlock.h). */
#define PEERSHARE_FS_EXECUTE (1ULL << 0)
#define PEERSHARE_FS_WRITE_FILE (1ULL << 1)
#define PEERSHARE_FS_READ_FILE (1ULL << 2)
#define PEERSHARE_FS_READ_DIR (1ULL << 3)
#define PEERSHARE_FS_REMOVE_DIR (1ULL << 4)
#define PEERSHARE_FS_REMOVE_FILE (1ULL << 5)
#define PEERSHARE_FS_MAKE_DIR (1ULL << 7)
#define PEERSHARE_FS_MAKE_REG (1ULL << 8)
#define PEERSHARE_FS_REFER (1ULL << 13)
#define PEERSHARE_FS_TRUNCATE (1ULL << 14)

/// The Landlock ABI version of the running kernel, 0 when Landlock is unavailable.
int peershare_landlock_abi(void);

/// Confines the calling thread and the threads and processes it starts afterwards (so call
/// it before any thread exists). `handle_files`: every filesystem access is denied except
/// `rights[i]` beneath `paths[i]`. `deny_tcp`: TCP bind and connect are denied (ABI 4+).
/// Signals and abstract unix sockets are scoped to the sandbox (ABI 6+). Sets
/// no_new_privs. Returns the ABI used, or -1 with errno set (EOPNOTSUPP: no Landlock).
int peershare_landlock_restrict(
    const char *const *paths, const unsigned long long *rights, int count, int handle_files, int deny_tcp);

#define PEERSHARE_SECCOMP_NETWORK 1
#define PEERSHARE_SECCOMP_FILES 2
#define PEERSHARE_SECCOMP_PLUGIN 3

/// Installs the profile's seccomp allowlist on every thread of the process (one file per
/// profile in seccomp/: common.h for all, then network.h, files.h or plugin.h). A system
/// call not listed fails with EPERM; socket(2) is allowed for AF_INET/AF_INET6 in the network
/// profile only, ioctl(2) for a few requests only (never TIOCSTI), clone(2) without namespace
/// flags. Returns 0, or -1 with errno set.
int peershare_seccomp_apply(int profile);

/// Probes (`peershare sandbox probe`): push one byte into a terminal's input (TIOCSTI), and
/// start a child in a new user namespace. Each returns 0 if it worked, -1 with errno if not.
int peershare_probe_tiocsti(int fd);
int peershare_probe_clone_newuser(void);

/// libFuzzer's driver (linked only into the fuzz build, `contrib/fuzz.sh`).
#include <stdint.h>
#include <stddef.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

/// struct ucred (SO_PEERCRED), which Glibc's module does not export without _GNU_SOURCE.
struct peershare_ucred {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

#endif
