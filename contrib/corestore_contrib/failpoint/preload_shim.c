/*
 * corestore failpoint preload shim (Linux, glibc). Shipped as source; corestore_contrib.failpoint
 * compiles it on first use and loads it with LD_PRELOAD into a child process only.
 *
 * It wraps the libc calls SQLite's unix VFS makes for file I/O and, for files whose path matches
 * an armed rule, fails them with a chosen errno (or makes a read come back short). SQLite then
 * maps the errno to its result code itself, exactly as on a failing disk: pread EIO becomes
 * SQLITE_IOERR_CORRUPTFS, pwrite ENOSPC SQLITE_FULL, fdatasync EIO SQLITE_IOERR_FSYNC.
 *
 * Which calls: Debian's libsqlite3 imports open64, pread64, pwrite64, fdatasync and ftruncate64
 * (`nm -D --undefined-only libsqlite3.so.0`); other builds may use the non-64 names, fsync or
 * openat, so those are wrapped too. close is wrapped only to forget the fd's path. Reads through
 * mmap (PRAGMA mmap_size > 0) and the -shm mapping bypass these calls and cannot be failed.
 *
 * Control file: its path is in $CORESTORE_FAILPOINT_CONTROL. One rule per line, '#' comments:
 *
 *     <id> <ops> <errno|short|eof> <after> <count> <glob>
 *
 *   id     a number naming the rule: a rule keeps its after/count bookkeeping across re-reads
 *   ops    comma-separated: open, read, write, sync (fsync+fdatasync), truncate
 *   errno  a positive errno (5 = EIO, 28 = ENOSPC, 13 = EACCES), or for reads "short" (the
 *          read returns the first half of the bytes, then end-of-file: SQLite's retry of the
 *          rest gets 0) or "eof" (0 bytes at once). On any other op these mean EIO.
 *   after  let this many matching calls through first
 *   count  fail this many matching calls, then let them through (-1: until healed)
 *   glob   fnmatch(3) pattern, no flags ('*' matches '/'), against the path given to open()
 *
 * Re-reading: every wrapped call on a file with a recorded path stat()s the control file and
 * re-reads it when its inode, size or mtime changed. The writer replaces the file by rename()
 * and stamps each version with an mtime (in ns) strictly later than the previous one, so no
 * change is missed however fast they come; a stat per I/O call is cheap next to the I/O. No
 * control file, or an empty one, means no faults.
 *
 * Counters: corestore_fp_seen[op] counts wrapped calls on files matching some rule's glob,
 * corestore_fp_failed[op] the calls this shim failed (or shortened); ops are indexed open, read,
 * write, sync, truncate. They are exported so the child can read them with ctypes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

enum { OP_OPEN, OP_READ, OP_WRITE, OP_SYNC, OP_TRUNCATE, N_OPS };
static const char *const op_names[N_OPS] = {"open", "read", "write", "sync", "truncate"};

#define MAX_RULES 32
#define MAX_FDS 16384
#define ERR_SHORT (-1)
#define ERR_EOF (-2)

struct rule {
    long id;
    unsigned ops;   /* bit set of (1 << OP_x) */
    int err;        /* errno to set, ERR_SHORT or ERR_EOF */
    long after;     /* matching calls to let through first */
    long count;     /* failures to inject; -1 = unlimited */
    long hits;      /* matching calls seen since the rule was armed */
    char glob[1024];
};

long corestore_fp_seen[N_OPS];
long corestore_fp_failed[N_OPS];

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES], previous[MAX_RULES];
static int n_rules;
static struct stat control_st;     /* identity of the version last read */
static int control_known;          /* 0: never read, or absent */
static char *fd_path[MAX_FDS];     /* path given to open(), by fd */

#define REAL(name) static __typeof__(name) *real_##name
REAL(open); REAL(open64); REAL(openat); REAL(openat64); REAL(close);
REAL(pread); REAL(pread64); REAL(pwrite); REAL(pwrite64);
REAL(fsync); REAL(fdatasync); REAL(ftruncate); REAL(ftruncate64);
/* Look the next definition up lazily: a wrapper may run before any constructor would. */
#define RESOLVE(name)                                                               \
    do { if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name); } while (0)

/* Re-read the control file if it changed. Called with the lock held. */
static void reload(void) {
    const char *path = getenv("CORESTORE_FAILPOINT_CONTROL");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        n_rules = 0;
        control_known = 0;
        return;
    }
    if (control_known && st.st_ino == control_st.st_ino && st.st_size == control_st.st_size &&
        st.st_mtim.tv_sec == control_st.st_mtim.tv_sec && st.st_mtim.tv_nsec == control_st.st_mtim.tv_nsec)
        return;
    RESOLVE(open);
    RESOLVE(close);
    int fd = real_open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return; /* replaced between stat and open: the next call reads it */
    char buf[16384];
    ssize_t len = read(fd, buf, sizeof buf - 1);
    real_close(fd);
    if (len < 0) return;
    buf[len] = '\0';
    int n_previous = n_rules;
    memcpy(previous, rules, sizeof rules);
    n_rules = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line && n_rules < MAX_RULES; line = strtok_r(NULL, "\n", &save)) {
        char ops[128], err[32];
        struct rule *r = &rules[n_rules];
        if (line[0] == '#') continue;
        if (sscanf(line, "%ld %127s %31s %ld %ld %1023[^\n]", &r->id, ops, err, &r->after, &r->count, r->glob) != 6)
            continue;
        r->ops = 0;
        for (char *p = ops, *q; p; p = q) {
            q = strchr(p, ',');
            if (q) *q++ = '\0';
            for (int i = 0; i < N_OPS; i++)
                if (strcmp(p, op_names[i]) == 0) r->ops |= 1u << i;
        }
        r->err = strcmp(err, "short") == 0 ? ERR_SHORT : strcmp(err, "eof") == 0 ? ERR_EOF : atoi(err);
        r->hits = 0;
        for (int i = 0; i < n_previous; i++)
            if (previous[i].id == r->id) r->hits = previous[i].hits;
        n_rules++;
    }
    control_st = st;
    control_known = 1;
}

/* Decide whether a call fails: 0 = let it through, else an errno, ERR_SHORT or ERR_EOF. The path is the
 * one given (open) or the one recorded for fd (everything else), looked up under the lock. */
static int decide(int op, int fd, const char *path) {
    int verdict = 0, seen = 0;
    pthread_mutex_lock(&lock);
    if (!path && fd >= 0 && fd < MAX_FDS) path = fd_path[fd];
    if (path) {
        reload();
        for (int i = 0; i < n_rules; i++) {
            struct rule *r = &rules[i];
            if (fnmatch(r->glob, path, 0) != 0) continue;
            seen = 1;
            if (!(r->ops & (1u << op))) continue;
            long n = r->hits++;
            if (!verdict && n >= r->after && (r->count < 0 || n - r->after < r->count)) verdict = r->err;
        }
    }
    if (seen) corestore_fp_seen[op]++;
    if (verdict) corestore_fp_failed[op]++;
    pthread_mutex_unlock(&lock);
    return verdict;
}

/* The errno a call fails with, or 0 to let it through. "short"/"eof" only shorten reads. */
static int fail_errno(int op, int fd, const char *path) {
    int verdict = decide(op, fd, path);
    return verdict < 0 ? EIO : verdict;
}

static void remember(int fd, const char *path) {
    if (fd < 0 || fd >= MAX_FDS || !path) return;
    char *copy = strdup(path);
    pthread_mutex_lock(&lock);
    free(fd_path[fd]);
    fd_path[fd] = copy;
    pthread_mutex_unlock(&lock);
}

/* open's mode argument exists only with O_CREAT or O_TMPFILE. */
#define OPEN_WRAPPER(name, ...)                                                     \
    {                                                                               \
        mode_t mode = 0;                                                            \
        if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {                \
            va_list ap;                                                             \
            va_start(ap, flags);                                                    \
            mode = va_arg(ap, mode_t);                                              \
            va_end(ap);                                                             \
        }                                                                           \
        int err = fail_errno(OP_OPEN, -1, path);                                    \
        if (err) { errno = err; return -1; }                                        \
        RESOLVE(name);                                                              \
        int fd = real_##name(__VA_ARGS__, flags, mode);                             \
        remember(fd, path);                                                         \
        return fd;                                                                  \
    }

int open(const char *path, int flags, ...) OPEN_WRAPPER(open, path)
int open64(const char *path, int flags, ...) OPEN_WRAPPER(open64, path)
/* openat records the path as given: SQLite passes absolute paths. */
int openat(int dirfd, const char *path, int flags, ...) OPEN_WRAPPER(openat, dirfd, path)
int openat64(int dirfd, const char *path, int flags, ...) OPEN_WRAPPER(openat64, dirfd, path)

int close(int fd) {
    if (fd >= 0 && fd < MAX_FDS) {
        pthread_mutex_lock(&lock);
        free(fd_path[fd]);
        fd_path[fd] = NULL;
        pthread_mutex_unlock(&lock);
    }
    RESOLVE(close);
    return real_close(fd);
}

/* The fd-based wrappers: fail with the rule's errno, else call the real function. */
#define FD_WRAPPER(op, name, ...)                                                   \
    {                                                                               \
        int err = fail_errno(op, fd, NULL);                                         \
        if (err) { errno = err; return -1; }                                        \
        RESOLVE(name);                                                              \
        return real_##name(__VA_ARGS__);                                            \
    }

/* A short read returns the first half; SQLite then asks for the rest at the offset where it
 * stopped, and that continuation gets end-of-file (0), so SQLite sees half a page followed by
 * the end of the file. The continuation is recognised per thread by fd and offset. */
static __thread int short_fd = -1;
static __thread off64_t short_end = -1;

#define READ_WRAPPER(name)                                                          \
    {                                                                               \
        if (fd == short_fd && off == short_end) {                                   \
            short_fd = -1;                                                          \
            return 0;                                                               \
        }                                                                           \
        int verdict = decide(OP_READ, fd, NULL);                                    \
        if (verdict > 0) { errno = verdict; return -1; }                            \
        if (verdict == ERR_EOF) return 0;                                           \
        RESOLVE(name);                                                              \
        if (verdict != ERR_SHORT) return real_##name(fd, buf, n, off);              \
        ssize_t got = real_##name(fd, buf, n / 2, off);                             \
        if (got > 0) { short_fd = fd; short_end = off + got; }                      \
        return got;                                                                 \
    }

ssize_t pread(int fd, void *buf, size_t n, off_t off) READ_WRAPPER(pread)
ssize_t pread64(int fd, void *buf, size_t n, off64_t off) READ_WRAPPER(pread64)
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) FD_WRAPPER(OP_WRITE, pwrite, fd, buf, n, off)
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) FD_WRAPPER(OP_WRITE, pwrite64, fd, buf, n, off)
int fsync(int fd) FD_WRAPPER(OP_SYNC, fsync, fd)
int fdatasync(int fd) FD_WRAPPER(OP_SYNC, fdatasync, fd)
int ftruncate(int fd, off_t len) FD_WRAPPER(OP_TRUNCATE, ftruncate, fd, len)
int ftruncate64(int fd, off64_t len) FD_WRAPPER(OP_TRUNCATE, ftruncate64, fd, len)
