/* util.h: what every tool shares: error reporting with sysexits codes,
 * checked allocation, checked I/O, and output files that appear atomically. */
#ifndef UPCYC_UTIL_H
#define UPCYC_UTIL_H

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sysexits.h>

#define UPCYC_VERSION "0.1.0"

/* The tool's name, used as the first word of every message on stderr. */
extern const char *upc_progname;

/* Set the tool name and install the handlers that remove temporary outputs
 * when the run is interrupted (SIGINT, SIGTERM, SIGHUP, SIGPIPE). */
void upc_init(const char *progname);

/* Print "tool: message" on stderr, remove every registered temporary output,
 * exit with code (one of <sysexits.h>). */
void upc_fail(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
/* Print "tool: message" on stderr and go on. */
void upc_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void upc_vwarn(const char *fmt, va_list ap);

/* Seconds on the monotonic clock (for intervals). */
double upc_now(void);

/* Environment variable `name` as an index into `choices`, a comma-separated
 * list whose first entry is the default (also for an unset or empty
 * variable); any other value fails with EX_USAGE: "NAME=VALUE: expected A
 * (the default), B or C". */
int upc_env_choice(const char *name, const char *choices);

void *upc_malloc(size_t n);
void *upc_calloc(size_t count, size_t size);
void *upc_realloc(void *p, size_t n);
char *upc_strdup(const char *s);
/* Grow *p (of *cap elements of size elem) to hold at least need elements. */
void upc_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Temporary outputs: a path registered here is removed (recursively for a
 * directory) if the tool fails or is interrupted before it unregisters it. */
void upc_tmp_register(const char *path);
void upc_tmp_unregister(const char *path);

/* An output file that appears under its final name only when complete:
 * written to "PATH.tmp.PID", fsynced and renamed by upc_out_commit. A path of
 * "-" or NULL means stdout, written directly. Every write error (full disk,
 * closed pipe) fails the tool with EX_IOERR naming the file. */
typedef struct {
    FILE *fp;
    char *path;     /* final name, NULL for stdout */
    char *tmp;      /* temporary name, NULL for stdout */
} upc_out;

void upc_out_open(upc_out *o, const char *path);
void upc_out_write(upc_out *o, const void *buf, size_t n);
void upc_out_commit(upc_out *o);
const char *upc_out_name(const upc_out *o);

/* Put a finished directory tmp (registered with upc_tmp_register) at out:
 * renamed into place when out does not exist, else swapped with it in one
 * atomic step (RENAME_EXCHANGE) and the old tree removed; then unregisters
 * tmp and fsyncs the parent. Readers of out see the old tree or the new. */
void upc_publish_dir(const char *tmp, const char *out);

/* Long-running tools that must finish a unit of work (a training step, a
 * checkpoint) before stopping: SIGINT, SIGTERM and SIGHUP only store the
 * signal number in *flag, which the tool polls. A second signal while *flag
 * is set removes the temporary outputs and kills the tool at once. */
void upc_defer_signals(volatile sig_atomic_t *flag);

/* "dir/name", newly allocated. */
char *upc_path_join(const char *dir, const char *name);
/* The directory part of a path ("." when it has none), newly allocated. */
char *upc_dirname(const char *path);

/* Fail with EX_USAGE: "tool: message (see tool --help)". */
void upc_usage_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Refuse to write binary data to a terminal. */
void upc_refuse_tty(FILE *fp, const char *what);

/* Open for reading ("-" or NULL is stdin); fails with EX_NOINPUT naming path. */
FILE *upc_open_in(const char *path);
/* Read a whole file into memory (NUL-terminated; *len excludes the NUL). */
char *upc_read_file(const char *path, size_t *len);
/* Write all of buf to fd or fail naming what. */
void upc_write_fd(int fd, const void *buf, size_t n, const char *what);

/* Create a directory (and its parents) or fail. */
void upc_mkdirs(const char *path);
/* Remove a file or directory tree; returns 0 on success. */
int upc_rm_rf(const char *path);
/* fsync a directory so a rename inside it is durable. */
void upc_fsync_dir(const char *dir);

/* Parse helpers for options: fail with EX_USAGE naming the option. */
long long upc_parse_int(const char *opt, const char *s, long long lo, long long hi);
/* Counts of tokens, steps, items: decimal suffixes K, M, G (x1000), so
 * "2G" tokens is two billion (upc_parse_int's suffixes are binary, for sizes). */
long long upc_parse_count(const char *opt, const char *s, long long lo, long long hi);
double upc_parse_double(const char *opt, const char *s, double lo, double hi);

/* A stable 64-bit hash (xxh64) for splits, digests and shuffles. */
uint64_t upc_hash64(const void *data, size_t n, uint64_t seed);

/* splitmix64: a tiny seeded generator; same seed, same sequence everywhere. */
static inline uint64_t upc_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Standard option handling every tool shares. */
int upc_is_help(const char *arg);
int upc_is_version(const char *arg);
void upc_print_version(void);
/* For tools with subcommands: when argv[1] is --help or --version, print
 * usage or the version and exit 0. */
void upc_handle_help_version(int argc, char **argv, const char *usage);

/* A whole input file in memory: memory-mapped when it is a regular file,
 * read into the heap when it is stdin ("-") or a pipe. */
typedef struct {
    const char *data;
    size_t len;
    void *map;     /* mmap base, or NULL */
    char *heap;    /* heap copy, or NULL */
} upc_mapped;

void upc_map_file(upc_mapped *m, const char *path);
/* A regular file mapped in place for reading at any offset (no sequential
 * hint); anything else fails with EX_NOINPUT "PATH: not a regular file,
 * expected WHAT". Release with upc_unmap. */
void upc_map_regular(upc_mapped *m, const char *path, const char *what);
void upc_unmap(upc_mapped *m);
#endif
