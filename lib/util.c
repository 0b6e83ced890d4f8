/* util.c: errors, allocation, checked I/O and atomic outputs. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <time.h>

const char *upc_progname = "upcyc";

/* Temporary outputs to remove on failure. Fixed size: a tool has a handful. */
#define MAX_TMP 64
static char *tmp_paths[MAX_TMP];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

int upc_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode))
        return unlink(path);
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* From a signal handler release is false: free is not async-signal-safe. */
static void remove_tmp_outputs(bool release)
{
    for (int i = 0; i < MAX_TMP; i++)
        if (tmp_paths[i]) {
            upc_rm_rf(tmp_paths[i]);
            if (release)
                free(tmp_paths[i]);
            tmp_paths[i] = NULL;
        }
}

static void on_signal(int sig)
{
    remove_tmp_outputs(false);
    signal(sig, SIG_DFL);
    raise(sig);
}

static volatile sig_atomic_t *deferred_flag;

/* The first signal is only noted; a second one means "now". */
static void on_deferred_signal(int sig)
{
    if (*deferred_flag)
        on_signal(sig);
    *deferred_flag = sig;
}

void upc_defer_signals(volatile sig_atomic_t *flag)
{
    deferred_flag = flag;
    *flag = 0;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], on_deferred_signal);
}

void upc_init(const char *progname)
{
    const char *slash = strrchr(progname, '/');
    upc_progname = slash ? slash + 1 : progname;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], on_signal);
    /* A closed pipe is an ordinary write error, reported by the writer. */
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit is a full disk by another name: report, clean up. */
    signal(SIGXFSZ, SIG_IGN);
}

void upc_vwarn(const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "%s: ", upc_progname);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void upc_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    upc_vwarn(fmt, ap);
    va_end(ap);
}

void upc_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    upc_vwarn(fmt, ap);
    va_end(ap);
    remove_tmp_outputs(true);
    exit(code);
}

void upc_tmp_register(const char *path)
{
    for (int i = 0; i < MAX_TMP; i++)
        if (!tmp_paths[i]) {
            tmp_paths[i] = upc_strdup(path);
            return;
        }
    upc_fail(EX_SOFTWARE, "too many temporary outputs");
}

void upc_tmp_unregister(const char *path)
{
    for (int i = 0; i < MAX_TMP; i++)
        if (tmp_paths[i] && strcmp(tmp_paths[i], path) == 0) {
            free(tmp_paths[i]);
            tmp_paths[i] = NULL;
        }
}

void *upc_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        upc_fail(EX_OSERR, "out of memory (%zu bytes)", n);
    return p;
}

void *upc_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        upc_fail(EX_OSERR, "out of memory (%zu x %zu bytes)", count, size);
    return p;
}

void *upc_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        upc_fail(EX_OSERR, "out of memory (%zu bytes)", n);
    return q;
}

char *upc_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(upc_malloc(n), s, n);
}

void upc_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    *p = upc_realloc(*p, c * elem);
    *cap = c;
}

char *upc_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = upc_malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void upc_usage_fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    upc_fail(EX_USAGE, "%s (see %s --help)", msg, upc_progname);
}

void upc_refuse_tty(FILE *fp, const char *what)
{
    if (isatty(fileno(fp)))
        upc_fail(EX_USAGE, "refusing to write %s to a terminal; redirect stdout or give an output path", what);
}

void upc_out_open(upc_out *o, const char *path)
{
    memset(o, 0, sizeof *o);
    if (!path || strcmp(path, "-") == 0) {
        o->fp = stdout;
        return;
    }
    /* A device or FIFO (/dev/full, a named pipe) is written in place:
     * renaming over it would replace the device with a file. */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode))
            upc_fail(EX_CANTCREAT, "%s: is a directory, expected a file name", path);
        o->fp = fopen(path, "wb");
        if (!o->fp)
            upc_fail(EX_CANTCREAT, "%s: cannot open: %s", path, strerror(errno));
        o->path = upc_strdup(path);
        return;
    }
    o->path = upc_strdup(path);
    size_t n = strlen(path) + 32;
    o->tmp = upc_malloc(n);
    snprintf(o->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    o->fp = fopen(o->tmp, "wb");
    if (!o->fp)
        upc_fail(EX_CANTCREAT, "%s: cannot create: %s", path, strerror(errno));
    upc_tmp_register(o->tmp);
}

const char *upc_out_name(const upc_out *o)
{
    return o->path ? o->path : "stdout";
}

void upc_out_write(upc_out *o, const void *buf, size_t n)
{
    if (n && fwrite(buf, 1, n, o->fp) != n)
        upc_fail(EX_IOERR, "%s: write failed: %s", upc_out_name(o), strerror(errno));
}

void upc_out_commit(upc_out *o)
{
    if (fflush(o->fp) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", upc_out_name(o), strerror(errno));
    if (!o->tmp) {
        /* stdout or a device: nothing to rename. */
        if (ferror(o->fp))
            upc_fail(EX_IOERR, "%s: write failed", upc_out_name(o));
        if (o->fp != stdout && fclose(o->fp) != 0)
            upc_fail(EX_IOERR, "%s: write failed: %s", o->path, strerror(errno));
        free(o->path);
        o->path = NULL;
        o->fp = NULL;
        return;
    }
    if (fsync(fileno(o->fp)) != 0 && errno != EINVAL)
        upc_fail(EX_IOERR, "%s: fsync failed: %s", o->path, strerror(errno));
    if (fclose(o->fp) != 0)
        upc_fail(EX_IOERR, "%s: write failed: %s", o->path, strerror(errno));
    o->fp = NULL;
    if (rename(o->tmp, o->path) != 0)
        upc_fail(EX_IOERR, "%s: cannot rename into place: %s", o->path, strerror(errno));
    upc_tmp_unregister(o->tmp);
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}

FILE *upc_open_in(const char *path)
{
    if (!path || strcmp(path, "-") == 0)
        return stdin;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        upc_fail(EX_NOINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode))
        upc_fail(EX_NOINPUT, "%s: is a directory, expected a file", path);
    return fp;
}

/* Everything left in fp, NUL-terminated; what names it in messages. */
static char *read_stream(FILE *fp, const char *what, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = upc_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = upc_realloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp))
                upc_fail(EX_IOERR, "%s: read failed: %s", what, strerror(errno));
            break;
        }
    }
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

char *upc_read_file(const char *path, size_t *len)
{
    FILE *fp = upc_open_in(path);
    char *buf = read_stream(fp, path ? path : "stdin", len);
    if (fp != stdin)
        fclose(fp);
    return buf;
}

void upc_write_fd(int fd, const void *buf, size_t n, const char *what)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            upc_fail(EX_IOERR, "%s: write failed: %s", what, strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
}

void upc_mkdirs(const char *path)
{
    char buf[PATH_MAX];
    if (strlen(path) >= sizeof buf)
        upc_fail(EX_USAGE, "%s: path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            upc_fail(EX_CANTCREAT, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        upc_fail(EX_CANTCREAT, "%s: cannot create directory: %s", buf, strerror(errno));
}

void upc_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return;
    fsync(fd);
    close(fd);
}

long long upc_parse_int(const char *opt, const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10), mult = 1;
    /* Accept binary suffixes: 64k, 16M, 2G. */
    if (end != s && (*end == 'k' || *end == 'K'))
        mult = 1024, end++;
    else if (end != s && (*end == 'm' || *end == 'M'))
        mult = 1024 * 1024, end++;
    else if (end != s && (*end == 'g' || *end == 'G'))
        mult = 1024LL * 1024 * 1024, end++;
    if (v > LLONG_MAX / mult || v < LLONG_MIN / mult)
        errno = ERANGE;
    else
        v *= mult;
    if (end == s || *end || errno || v < lo || v > hi)
        upc_fail(EX_USAGE, "%s: expected an integer in [%lld, %lld], got '%s'", opt, lo, hi, s);
    return v;
}

long long upc_parse_count(const char *opt, const char *s, long long lo, long long hi)
{
    char buf[64];
    size_t n = strlen(s);
    if (n > 1 && n < sizeof buf && strchr("KMG", s[n - 1])) {
        long long mult = s[n - 1] == 'K' ? 1000 : s[n - 1] == 'M' ? 1000000 : 1000000000;
        memcpy(buf, s, n - 1);
        buf[n - 1] = 0;
        char *end;
        errno = 0;
        long long v = strtoll(buf, &end, 10);
        if (*end || errno || v < 0 || v > hi / mult || v * mult < lo)
            upc_fail(EX_USAGE, "%s: expected a count in [%lld, %lld], got '%s'", opt, lo, hi, s);
        return v * mult;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        upc_fail(EX_USAGE, "%s: expected a count in [%lld, %lld], got '%s'", opt, lo, hi, s);
    return v;
}

double upc_parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        upc_fail(EX_USAGE, "%s: expected a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

uint64_t upc_hash64(const void *data, size_t n, uint64_t seed)
{
    return XXH64(data, n, seed);
}

int upc_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int upc_is_version(const char *arg)
{
    return strcmp(arg, "--version") == 0;
}

void upc_print_version(void)
{
    printf("%s (upcyc) %s\n", upc_progname, UPCYC_VERSION);
}

/* Map path if it is a regular file (advice: the madvise hint); false for a
 * pipe or device, which the caller reads another way. With `what` set,
 * anything but a regular file fails, naming what was expected. */
/* Map path when it is a regular file and return -1; otherwise return the
 * open descriptor, so a FIFO is opened once (a second open would make its
 * writer see a closed pipe, or lose what it wrote in between). */
static int map_regular(upc_mapped *m, const char *path, int advice, const char *what)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        upc_fail(EX_NOINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0)
        upc_fail(EX_IOERR, "%s: cannot stat: %s", path, strerror(errno));
    if (what && !S_ISREG(st.st_mode))
        upc_fail(EX_NOINPUT, "%s: not a regular file, expected %s", path, what);
    if (S_ISDIR(st.st_mode))
        upc_fail(EX_NOINPUT, "%s: is a directory, expected a file", path);
    if (!S_ISREG(st.st_mode))
        return fd;
    m->len = (size_t)st.st_size;
    if (m->len) {
        m->map = mmap(NULL, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m->map == MAP_FAILED)
            upc_fail(EX_IOERR, "%s: cannot map: %s", path, strerror(errno));
        madvise(m->map, m->len, advice);
    }
    m->data = m->map ? m->map : "";
    close(fd);
    return -1;
}

void upc_map_file(upc_mapped *m, const char *path)
{
    memset(m, 0, sizeof *m);
    if (!path || strcmp(path, "-") == 0) {
        m->heap = upc_read_file(path, &m->len);
    } else {
        int fd = map_regular(m, path, MADV_SEQUENTIAL, NULL);
        if (fd < 0)
            return;
        FILE *fp = fdopen(fd, "rb");
        if (!fp)
            upc_fail(EX_IOERR, "%s: cannot read: %s", path, strerror(errno));
        m->heap = read_stream(fp, path, &m->len);
        fclose(fp);
    }
    m->data = m->heap;
}

void upc_map_regular(upc_mapped *m, const char *path, const char *what)
{
    memset(m, 0, sizeof *m);
    map_regular(m, path, MADV_NORMAL, what);   /* refuses anything but a regular file */
}

void upc_unmap(upc_mapped *m)
{
    if (m->map)
        munmap(m->map, m->len);
    free(m->heap);
    memset(m, 0, sizeof *m);
}

char *upc_dirname(const char *p)
{
    char *d = upc_strdup(p);
    char *s = strrchr(d, '/');
    if (!s) {
        free(d);
        return upc_strdup(".");
    }
    if (s == d)
        s[1] = 0;
    else
        *s = 0;
    return d;
}

void upc_handle_help_version(int argc, char **argv, const char *usage)
{
    if (argc < 2)
        return;
    if (upc_is_help(argv[1])) {
        fputs(usage, stdout);
        exit(0);
    }
    if (upc_is_version(argv[1])) {
        upc_print_version();
        exit(0);
    }
}

void upc_publish_dir(const char *tmp, const char *out)
{
    struct stat st;
    bool exists = lstat(out, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode))
        upc_fail(EX_CANTCREAT, "%s: exists and is not a directory; not replacing it", out);
    if (exists) {
        /* Swap atomically, then remove the old tree (now under tmp). */
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) != 0)
            upc_fail(EX_CANTCREAT, "%s: cannot replace: %s", out, strerror(errno));
    } else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_NOREPLACE) != 0) {
        if (errno != EINVAL || rename(tmp, out) != 0)
            upc_fail(errno == EEXIST ? EX_CANTCREAT : EX_IOERR, "%s: cannot rename into place: %s", out,
                     strerror(errno));
    }
    if (exists && upc_rm_rf(tmp) != 0)
        upc_warn("%s: could not remove the replaced directory", tmp);
    upc_tmp_unregister(tmp);
    char *parent = upc_dirname(out);
    upc_fsync_dir(parent);
    free(parent);
}

double upc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int upc_env_choice(const char *name, const char *choices)
{
    const char *v = getenv(name);
    int index = 0;
    for (const char *c = choices; *c; index++) {
        size_t n = strcspn(c, ",");
        if (!v || !*v || (strlen(v) == n && strncmp(v, c, n) == 0))
            return v && *v ? index : 0;
        c += n + (c[n] == ',');
    }
    char expected[256] = "";
    index = 0;
    for (const char *c = choices; *c; index++) {
        size_t n = strcspn(c, ","), at = strlen(expected);
        const char *sep = index == 0 ? "" : c[n] ? ", " : " or ";
        snprintf(expected + at, sizeof expected - at, "%s%.*s%s", sep, (int)n, c, index == 0 ? " (the default)" : "");
        c += n + (c[n] == ',');
    }
    upc_fail(EX_USAGE, "%s=%s: expected %s", name, v, expected);
}
