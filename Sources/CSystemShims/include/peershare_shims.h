#ifndef PEERSHARE_SHIMS_H
#define PEERSHARE_SHIMS_H
#include <sys/types.h>

/// prctl(PR_SET_PDEATHSIG, sig): the kernel sends `sig` to this process when its parent dies.
int peershare_set_parent_death_signal(int sig);

/// Starts `path` with `argv`/`envp` (NULL-terminated) in a new process group, with
/// `child_fd` placed on descriptor `target_fd`, SIGINT/SIGTERM/SIGPIPE reset to their
/// defaults and an empty signal mask. Returns the pid, or -1 with errno set.
pid_t peershare_spawn(const char *path, char *const argv[], char *const envp[], int child_fd, int target_fd);

/// The same with several descriptors: child_fds[i] is placed on target_fds[i].
pid_t peershare_spawn_fds(
    const char *path, char *const argv[], char *const envp[], const int *child_fds, const int *target_fds, int count);

/// Keeps chunk-sized allocations in the heap (no mmap/munmap, no trimming per buffer).
void peershare_tune_allocator(void);

#endif
