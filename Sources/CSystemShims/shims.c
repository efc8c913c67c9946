#define _GNU_SOURCE
#include "peershare_shims.h"
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <malloc.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

int peershare_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int peershare_syncfs(int fd) { return syncfs(fd); }

void peershare_tune_allocator(void) {
    /* Chunk-sized buffers (64 KiB to 4 MiB) are allocated and freed all the time. By default
       glibc serves large ones with mmap or trims the heap after freeing them, so every
       buffer costs fresh page faults and kernel zeroing. Keep them in the heap instead:
       the amount live at once is bounded by the request depth and the queues, not by the
       share's size. Anything larger than any chunk (8 MiB: a manifest of 100,000 files and
       the messages that carry it) is mapped on its own and given back when freed, so a few
       passing copies of it do not stay in every process's heap. */
    mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
    mallopt(M_ARENA_MAX, 1);
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
    /* dup2 clears close-on-exec on the target. The child then holds exactly what it is
       given: standard descriptors not given are /dev/null (never the user's terminal, whose
       ioctls — TIOCSTI — would let a sandboxed process type into the user's shell), and
       every descriptor above the highest given one is closed, close-on-exec or not. */
    rc = 0;
    int highest = 2;
    int given[3] = {0, 0, 0};
    for (int i = 0; i < count && rc == 0; i++) {
        rc = posix_spawn_file_actions_adddup2(&actions, child_fds[i], target_fds[i]);
        if (target_fds[i] > highest) highest = target_fds[i];
        if (target_fds[i] >= 0 && target_fds[i] <= 2) given[target_fds[i]] = 1;
    }
    for (int fd = 0; fd <= 2 && rc == 0; fd++)
        if (!given[fd]) rc = posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, highest + 1);
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

/* ---- Sandbox: Landlock and seccomp ------------------------------------------------------
   Debian 12's kernel headers predate Landlock's network and scope rules, so the ABI's
   structures and constants are spelled out here (include/uapi/linux/landlock.h). */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/audit.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/stat.h>

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif

struct peershare_landlock_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct peershare_landlock_path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define PS_LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#define PS_LANDLOCK_RULE_PATH_BENEATH 1
#define PS_LANDLOCK_ACCESS_NET_BIND_TCP (1ULL << 0)
#define PS_LANDLOCK_ACCESS_NET_CONNECT_TCP (1ULL << 1)
#define PS_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define PS_LANDLOCK_SCOPE_SIGNAL (1ULL << 1)

int peershare_landlock_abi(void) {
    long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, PS_LANDLOCK_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int)abi;
}

/* Every filesystem right the running kernel knows, so that anything not granted is denied. */
static uint64_t landlock_fs_rights(int abi) {
    uint64_t rights = (1ULL << 13) - 1; /* ABI 1: EXECUTE .. MAKE_SYM */
    if (abi >= 2) rights |= PEERSHARE_FS_REFER;
    if (abi >= 3) rights |= PEERSHARE_FS_TRUNCATE;
    if (abi >= 5) rights |= (1ULL << 15); /* IOCTL_DEV */
    return rights;
}

int peershare_landlock_restrict(
    const char *const *paths, const unsigned long long *rights, int count, int handle_files, int deny_tcp) {
    int abi = peershare_landlock_abi();
    if (abi <= 0) { errno = EOPNOTSUPP; return -1; }
    struct peershare_landlock_ruleset_attr attr;
    memset(&attr, 0, sizeof attr);
    size_t size = sizeof attr.handled_access_fs;
    uint64_t all_fs = landlock_fs_rights(abi);
    if (handle_files) attr.handled_access_fs = all_fs;
    if (abi >= 4) {
        size = offsetof(struct peershare_landlock_ruleset_attr, scoped);
        if (deny_tcp) attr.handled_access_net = PS_LANDLOCK_ACCESS_NET_BIND_TCP | PS_LANDLOCK_ACCESS_NET_CONNECT_TCP;
    }
    if (abi >= 6) {
        size = sizeof attr;
        /* Signals and abstract unix sockets stay inside the sandbox: a worker cannot signal
           the supervisor or another user's process, nor reach an abstract socket outside. */
        attr.scoped = PS_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | PS_LANDLOCK_SCOPE_SIGNAL;
    }
    if (attr.handled_access_fs == 0 && attr.handled_access_net == 0 && attr.scoped == 0) return 0;
    int ruleset = (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0) return -1;
    for (int i = 0; i < count && handle_files; i++) {
        int fd = open(paths[i], O_PATH | O_CLOEXEC);
        if (fd < 0) continue; /* a path that does not exist grants nothing */
        struct stat info;
        uint64_t allowed = rights[i] & all_fs;
        /* Rules on a file may only carry the rights that apply to files. */
        if (fstat(fd, &info) == 0 && !S_ISDIR(info.st_mode))
            allowed &= PEERSHARE_FS_EXECUTE | PEERSHARE_FS_WRITE_FILE | PEERSHARE_FS_READ_FILE | PEERSHARE_FS_TRUNCATE
                | (1ULL << 15);
        struct peershare_landlock_path_beneath_attr rule = {.allowed_access = allowed, .parent_fd = fd};
        long rc = allowed ? syscall(__NR_landlock_add_rule, ruleset, PS_LANDLOCK_RULE_PATH_BENEATH, &rule, 0) : 0;
        int saved = errno;
        close(fd);
        if (rc < 0) { close(ruleset); errno = saved; return -1; }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || syscall(__NR_landlock_restrict_self, ruleset, 0) != 0) {
        int saved = errno;
        close(ruleset);
        errno = saved;
        return -1;
    }
    close(ruleset);
    return abi;
}

#if defined(__x86_64__)
#define PS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define PS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#include <sys/ioctl.h>
#include <termios.h>
#include <sched.h>
#include <sys/socket.h>
#include "seccomp/common.h"
#include "seccomp/network.h"
#include "seccomp/files.h"
#include "seccomp/plugin.h"

/* A classic BPF program, built instruction by instruction. Jumps are relative and at most
   255 ahead, so each argument check sits inline right after its syscall's comparison and
   ends in a return; the long list of plain allowances comes after, one comparison each. */
struct peershare_bpf {
    struct sock_filter code[1024];
    int count;
    int overflow;
};

static void bpf_emit(struct peershare_bpf *p, struct sock_filter op) {
    if (p->count >= (int)(sizeof p->code / sizeof p->code[0])) {
        p->overflow = 1;
        return;
    }
    p->code[p->count++] = op;
}

#define PS_RET(value) ((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, (value)))
#define PS_DENY PS_RET(SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))
#define PS_ALLOW PS_RET(SECCOMP_RET_ALLOW)
#define PS_LOAD_ARG(index) ((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[index])))
#define PS_JEQ(value, jt, jf) ((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)(value), (jt), (jf)))

static void bpf_allow_list(struct peershare_bpf *p, const int *calls, size_t count) {
    for (size_t i = 0; i < count; i++) {
        bpf_emit(p, PS_JEQ(calls[i], 0, 1));
        bpf_emit(p, PS_ALLOW);
    }
}

int peershare_seccomp_apply(int profile) {
#ifndef PS_AUDIT_ARCH
    (void)profile;
    errno = EOPNOTSUPP;
    return -1;
#else
    static struct peershare_bpf program;
    struct peershare_bpf *p = &program;
    p->count = 0;
    p->overflow = 0;
    bpf_emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    /* Another architecture's calling convention (e.g. 32-bit x86) would dodge the numbers. */
    bpf_emit(p, PS_JEQ(PS_AUDIT_ARCH, 1, 0));
    bpf_emit(p, PS_RET(SECCOMP_RET_KILL_PROCESS));
    bpf_emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* x32 system calls share x86_64's architecture value and set bit 30: refuse them all. */
    bpf_emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1));
    bpf_emit(p, PS_DENY);
#endif

    /* socket(2): network workers only, and only AF_INET and AF_INET6. */
    if (profile == PEERSHARE_SECCOMP_NETWORK) {
        bpf_emit(p, PS_JEQ(__NR_socket, 0, 5));
        bpf_emit(p, PS_LOAD_ARG(0));
        bpf_emit(p, PS_JEQ(AF_INET, 2, 0));
        bpf_emit(p, PS_JEQ(AF_INET6, 1, 0));
        bpf_emit(p, PS_DENY);
        bpf_emit(p, PS_ALLOW);
    }

    /* ioctl(2): only the listed requests. */
    size_t ioctls = sizeof peershare_seccomp_ioctls / sizeof peershare_seccomp_ioctls[0];
    bpf_emit(p, PS_JEQ(__NR_ioctl, 0, (unsigned char)(ioctls + 3)));
    bpf_emit(p, PS_LOAD_ARG(1));
    for (size_t i = 0; i < ioctls; i++) bpf_emit(p, PS_JEQ(peershare_seccomp_ioctls[i], (unsigned char)(ioctls - i), 0));
    bpf_emit(p, PS_DENY);
    bpf_emit(p, PS_ALLOW);

    /* clone(2): threads yes, new namespaces no. clone3 passes its flags in memory, which a
       filter cannot read: it fails with ENOSYS, and glibc then uses clone. */
    const unsigned namespaces =
        CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP;
    bpf_emit(p, PS_JEQ(__NR_clone, 0, 4));
    bpf_emit(p, PS_LOAD_ARG(0));
    bpf_emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, namespaces, 0, 1));
    bpf_emit(p, PS_DENY);
    bpf_emit(p, PS_ALLOW);
#ifdef __NR_clone3
    bpf_emit(p, PS_JEQ(__NR_clone3, 0, 1));
    bpf_emit(p, PS_RET(SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
#endif

    bpf_allow_list(p, peershare_seccomp_common, sizeof peershare_seccomp_common / sizeof(int));
    switch (profile) {
    case PEERSHARE_SECCOMP_NETWORK:
        bpf_allow_list(p, peershare_seccomp_network, sizeof peershare_seccomp_network / sizeof(int));
        break;
    case PEERSHARE_SECCOMP_FILES:
        bpf_allow_list(p, peershare_seccomp_files, sizeof peershare_seccomp_files / sizeof(int));
        break;
    case PEERSHARE_SECCOMP_PLUGIN:
        bpf_allow_list(p, peershare_seccomp_plugin, sizeof peershare_seccomp_plugin / sizeof(int));
        break;
    default:
        errno = EINVAL;
        return -1;
    }
    bpf_emit(p, PS_DENY);
    if (p->overflow) {
        errno = E2BIG;
        return -1;
    }
    struct sock_fprog fprog = {.len = (unsigned short)p->count, .filter = p->code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    /* TSYNC: every thread of the process, not only the calling one. */
    return (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fprog);
#endif
}

/* ---- Probes for `peershare sandbox probe`: what a compromised process would try. ---- */
#include <sys/wait.h>

int peershare_probe_tiocsti(int fd) {
    char c = ' ';
    return ioctl(fd, TIOCSTI, &c);
}

int peershare_probe_clone_newuser(void) {
    long pid = syscall(__NR_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid < 0) return -1;
    int status = 0;
    while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {}
    return 0;
}
