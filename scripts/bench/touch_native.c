/* Native reference for the guest `touch` payload's seq write pattern:
 * one 8-byte store per 4 KiB page over an already-faulted anonymous buffer,
 * each pass timed with CLOCK_MONOTONIC.
 *
 * usage: touch_native BYTES
 *   faults the buffer in, prints "ready", then for every line "N" on stdin
 *   runs N passes and prints "pass <i> <ns>" for each, until end of input.
 *   The driver interleaves these rounds with the guest's, so changing load
 *   on a shared host hits both sides alike.
 * Built by scripts/bench_core.py with gcc -O2 at bench time. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s BYTES\n", argv[0]);
        return 2;
    }
    size_t bytes = strtoull(argv[1], NULL, 0);
    size_t pages = bytes / 4096;
    int passes, p = 0;
    /* Same kind of memory as the guest's default backing: private anonymous, no THP advice. */
    volatile uint64_t *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < pages; i++) /* fault every page in first, like the guest's epoch 0 */
        buf[i * 512] = 0;
    printf("ready\n");
    fflush(stdout);
    while (scanf("%d", &passes) == 1) {
        for (int end = p + passes; p < end; p++) {
            uint64_t stamp = (uint64_t)p + 1, t0 = now_ns();
            for (size_t i = 0; i < pages; i++)
                buf[i * 512] = stamp; /* volatile: exactly one store per page, as the guest does */
            printf("pass %d %llu\n", p, (unsigned long long)(now_ns() - t0));
        }
        fflush(stdout);
    }
    munmap((void *)buf, bytes);
    return 0;
}
