/* The fuzz driver of the C runtime: the exported CLI's main (program/c/main.c, renamed) called in
 * one process for each (model.bin, input) pair read from stdin, built with
 * -fsanitize=address,undefined (intasr/fuzz/native.py). Per call it replies on its stdout with
 * "rc peak_bytes microseconds leaks": the CLI's exit status, the most heap the call held beyond
 * what was held before it (the sanitizer's malloc / free hooks), its time, and whether
 * LeakSanitizer found memory the call left unreachable. The CLI's own stdout goes to /dev/null,
 * its stderr (and any sanitizer report) to the file named third on the line. */
#define main asrq_cli_main
#include "main.c"
#undef main

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

void __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                               void (*free_hook)(const volatile void *));
size_t __sanitizer_get_allocated_size(const volatile void *p);
int __lsan_do_recoverable_leak_check(void);

static long long held, peak;
static void on_malloc(const volatile void *p, size_t n) { (void)p; held += (long long)n; if (held > peak) peak = held; }
static void on_free(const volatile void *p) { if (p) held -= (long long)__sanitizer_get_allocated_size(p); }

int main(void) {
    static char line[16384];
    int reply_fd = dup(1);
    FILE *reply = fdopen(reply_fd, "w");
    int devnull = open("/dev/null", O_WRONLY);
    if (!reply || devnull < 0) return 3;
    dup2(devnull, 1);
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *model = line, *input = strchr(model, '\t'), *err = NULL;
        if (!input) continue;
        *input++ = 0;
        err = strchr(input, '\t');
        if (!err) continue;
        *err++ = 0;
        int efd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (efd < 0) return 3;
        fflush(stderr);
        dup2(efd, 2);
        close(efd);
        long long base = held;
        peak = held;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        char *argv[] = {"asrq", model, input, NULL};
        int rc = asrq_cli_main(3, argv);
        fflush(stdout);
        fflush(stderr);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        int leaks = __lsan_do_recoverable_leak_check();
        fflush(stderr);
        long long us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
        fprintf(reply, "%d %lld %lld %d\n", rc, peak - base, us, leaks);
        fflush(reply);
    }
    return 0;
}
