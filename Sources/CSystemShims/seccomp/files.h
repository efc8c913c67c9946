/* seccomp allowlist of the files-only profile: the hash worker. On top of common.h: the
   calls that read a shared tree and write a download (Landlock decides which paths).
   No socket(2) at all. */

static const int peershare_seccomp_files[] = {
    __NR_getdents64, __NR_mkdirat, __NR_unlinkat, __NR_renameat, __NR_renameat2, __NR_ftruncate,
    __NR_fsync, __NR_fdatasync, __NR_syncfs, __NR_fallocate, __NR_fadvise64, __NR_utimensat, __NR_fchmod,
    __NR_fchmodat, __NR_statfs, __NR_fstatfs, __NR_sync_file_range, __NR_copy_file_range,
#if defined(__x86_64__)
    __NR_mkdir, __NR_rmdir, __NR_unlink, __NR_rename, __NR_chmod, __NR_getdents,
#endif
};
