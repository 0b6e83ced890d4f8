/* test_harness.h: what the unit tests share: counted checks that name the
 * failing line (CHECK, CHECK_MSG) and EXPECT_FAIL, which runs code that must
 * fail the tool in a child process and checks the child's exit code and its
 * one line on stderr. The test prints or returns `failures` itself. */
#ifndef TEST_HARNESS_H
#define TEST_HARNESS_H

#include "util.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;

/* CHECK_MSG(cond, fmt, ...): on failure print "FAIL file:line: " and the
 * message; the message's arguments are evaluated only then. */
#define CHECK_MSG(cond, ...)                                                  \
    do {                                                                      \
        checks++;                                                             \
        if (!(cond)) {                                                        \
            failures++;                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)
/* CHECK(cond): the message is the condition's text. */
#define CHECK(cond) CHECK_MSG(cond, "%s", #cond)

/* Run fn(arg) in a child: it must exit with `code`, printing exactly one line
 * "PROGNAME: ..." (PROGNAME as given to upc_init) that contains every string
 * in want (NULL-ended). The child exits through upc_fail's exit(), so under
 * LeakSanitizer a failure path that drops memory fails the check: what the
 * failing code still holds is on the stack of frames exit() never returns
 * to, which the leak checker scans, so it is not reported. */
static inline void expect_fail_fn(int line, void (*fn)(const void *), const void *arg, int code,
                                  const char *const *want)
{
    int fds[2];
    if (pipe(fds) != 0)
        upc_fail(EX_OSERR, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char out[4096];
    size_t n = 0;
    ssize_t got;
    while ((got = read(fds[0], out + n, sizeof out - 1 - n)) > 0)
        n += (size_t)got;
    out[n] = 0;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == code;
    const char *nl = strchr(out, '\n');
    size_t plen = strlen(upc_progname);
    ok = ok && nl && nl[1] == 0 && strncmp(out, upc_progname, plen) == 0 && strncmp(out + plen, ": ", 2) == 0;
    for (int i = 0; want[i]; i++)
        ok = ok && strstr(out, want[i]);
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "FAIL line %d: expected exit %d and one line with", line, code);
        for (int i = 0; want[i]; i++)
            fprintf(stderr, " [%s]", want[i]);
        fprintf(stderr, "; got exit %d, output: %s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
    }
}
#define EXPECT_FAIL(fn, arg, code, ...) \
    expect_fail_fn(__LINE__, fn, arg, code, (const char *const[]){__VA_ARGS__, NULL})

#endif
