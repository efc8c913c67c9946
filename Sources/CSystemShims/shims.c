#define _GNU_SOURCE
#include "peershare_shims.h"
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <malloc.h>

void peershare_tune_allocator(void) {
    /* Chunk-sized buffers (64 KiB to 4 MiB) are allocated and freed all the time. By default
       glibc serves large ones with mmap or trims the heap after freeing them, so every
       buffer costs fresh page faults and kernel zeroing. Keep them in the heap instead:
       the amount live at once is bounded by the request depth and the queues, not by the
       share's size. */
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
}

int peershare_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0); }

pid_t peershare_spawn(const char *path, char *const argv[], char *const envp[], int child_fd, int target_fd) {
    return peershare_spawn_fds(path, argv, envp, &child_fd, &target_fd, 1);
}

pid_t peershare_spawn_fds(
    const char *path, char *const argv[], char *const envp[], const int *child_fds, const int *target_fds, int count) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    pid_t pid = -1;
    int rc;
    if ((rc = posix_spawn_file_actions_init(&actions)) != 0) { errno = rc; return -1; }
    if ((rc = posix_spawnattr_init(&attributes)) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        errno = rc;
        return -1;
    }
    /* dup2 clears close-on-exec on the target; every other descriptor of ours has it set. */
    rc = 0;
    for (int i = 0; i < count && rc == 0; i++) rc = posix_spawn_file_actions_adddup2(&actions, child_fds[i], target_fds[i]);
    sigset_t defaults, empty;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGPIPE);
    sigemptyset(&empty);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attributes, &defaults);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attributes, &empty);
    /* Own process group: Ctrl-C on the terminal reaches the supervisor only, which then
       stops the workers in order. */
    if (rc == 0) rc = posix_spawnattr_setpgroup(&attributes, 0);
    if (rc == 0)
        rc = posix_spawnattr_setflags(
            &attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
    if (rc == 0) rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (rc != 0) { errno = rc; return -1; }
    return pid;
}
