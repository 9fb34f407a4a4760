/* Raw-ioctl reference for scripts/bench_core.py: runs the guest kvmctl
 * prepared, so Python and C execute the very same guest.
 *
 * The image file (written by bench_core.py from a built GuestMachine):
 *   u64 magic "KVMCTLIM", u64 system size, u64 data slots,
 *   slots x (u64 gpa, u64 size), struct kvm_sregs, struct kvm_regs,
 *   then the system area (page tables, GDT, IDT, TSS, payload, mailbox).
 *
 * usage: kvm_guest IMAGE create RUNS PORT
 *            build the VM from scratch (open /dev/kvm .. first KVM_RUN) RUNS
 *            times; the first exit must be `out PORT`; prints "create <ns> <data>"
 *            with the value the guest wrote (the payload's ready marker)
 *        kvm_guest IMAGE loop PING_PORT EXIT_PORT
 *            run until `out EXIT_PORT`, counting `out PING_PORT` exits;
 *            prints "loop <exits> <ns>"
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_SLOTS 64

struct image {
    uint64_t sys_size, nslots;
    uint64_t gpa[MAX_SLOTS], size[MAX_SLOTS];
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    unsigned char *sys;
};

struct vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    void *mem[MAX_SLOTS + 1];
    size_t mem_size[MAX_SLOTS + 1];
};

static void die(const char *what)
{
    fprintf(stderr, "kvm_guest: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void read_exact(FILE *f, void *p, size_t n)
{
    if (fread(p, 1, n, f) != n) {
        fprintf(stderr, "kvm_guest: truncated image\n");
        exit(1);
    }
}

static void load_image(const char *path, struct image *im)
{
    FILE *f = fopen(path, "rb");
    uint64_t magic;
    if (!f)
        die(path);
    read_exact(f, &magic, 8);
    if (memcmp(&magic, "KVMCTLIM", 8)) {
        fprintf(stderr, "kvm_guest: %s is not a kvmctl guest image\n", path);
        exit(1);
    }
    read_exact(f, &im->sys_size, 8);
    read_exact(f, &im->nslots, 8);
    if (im->nslots > MAX_SLOTS)
        exit(1);
    for (uint64_t i = 0; i < im->nslots; i++) {
        read_exact(f, &im->gpa[i], 8);
        read_exact(f, &im->size[i], 8);
    }
    read_exact(f, &im->sregs, sizeof(im->sregs));
    read_exact(f, &im->regs, sizeof(im->regs));
    im->sys = malloc(im->sys_size);
    read_exact(f, im->sys, im->sys_size);
    fclose(f);
}

static void *map_anon(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

static void add_slot(struct vm *v, uint32_t slot, uint64_t gpa, void *mem, uint64_t size)
{
    struct kvm_userspace_memory_region r = {
        .slot = slot, .guest_phys_addr = gpa, .memory_size = size, .userspace_addr = (uint64_t)mem};
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    v->mem[slot] = mem;
    v->mem_size[slot] = size;
}

/* Everything kvmctl's GuestMachine does through ioctls, from /dev/kvm to a runnable vCPU. */
static void build(struct vm *v, const struct image *im)
{
    int n = 256;
    struct kvm_cpuid2 *cpuid;

    memset(v, 0, sizeof(*v));
    if ((v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0)
        die("/dev/kvm");
    if (ioctl(v->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        die("KVM_GET_API_VERSION");
    v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if ((v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0)) < 0)
        die("KVM_CREATE_VM");
    void *sys = map_anon(im->sys_size);
    memcpy(sys, im->sys, im->sys_size);
    add_slot(v, 0, 0, sys, im->sys_size);
    for (uint64_t i = 0; i < im->nslots; i++)
        add_slot(v, i + 1, im->gpa[i], map_anon(im->size[i]), im->size[i]);
    if ((v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0)) < 0)
        die("KVM_CREATE_VCPU");
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run");
    cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = n;
    if (ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(v->vcpu, KVM_SET_CPUID2, cpuid) < 0)
        die("KVM_SET_CPUID2");
    free(cpuid);
    if (ioctl(v->vcpu, KVM_SET_SREGS, &im->sregs) < 0)
        die("KVM_SET_SREGS");
    if (ioctl(v->vcpu, KVM_SET_REGS, &im->regs) < 0)
        die("KVM_SET_REGS");
}

static void destroy(struct vm *v, const struct image *im)
{
    munmap(v->run, v->run_size);
    close(v->vcpu);
    close(v->vm);
    close(v->kvm);
    for (uint64_t i = 0; i <= im->nslots; i++)
        munmap(v->mem[i], v->mem_size[i]);
}

static unsigned io_port(const struct vm *v)
{
    if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.direction != KVM_EXIT_IO_OUT) {
        fprintf(stderr, "kvm_guest: unexpected exit reason %u\n", v->run->exit_reason);
        exit(1);
    }
    return v->run->io.port;
}

int main(int argc, char **argv)
{
    struct image im;
    struct vm v;

    if (argc != 5) {
        fprintf(stderr, "usage: %s IMAGE create RUNS PORT | IMAGE loop PING_PORT EXIT_PORT\n", argv[0]);
        return 2;
    }
    load_image(argv[1], &im);
    if (!strcmp(argv[2], "create")) {
        int runs = atoi(argv[3]);
        unsigned port = strtoul(argv[4], NULL, 0);
        for (int i = 0; i < runs; i++) {
            uint64_t t0 = now_ns();
            build(&v, &im);
            if (ioctl(v.vcpu, KVM_RUN, 0) < 0)
                die("KVM_RUN");
            uint64_t t1 = now_ns();
            if (io_port(&v) != port) {
                fprintf(stderr, "kvm_guest: first exit on port %#x, expected %#x\n", io_port(&v), port);
                return 1;
            }
            uint32_t data;
            memcpy(&data, (char *)v.run + v.run->io.data_offset, sizeof(data));
            destroy(&v, &im);
            printf("create %llu %u\n", (unsigned long long)(t1 - t0), data);
        }
        return 0;
    }
    if (!strcmp(argv[2], "loop")) {
        unsigned ping = strtoul(argv[3], NULL, 0), done = strtoul(argv[4], NULL, 0);
        uint64_t exits = 0;
        build(&v, &im);
        uint64_t t0 = now_ns();
        for (;;) {
            if (ioctl(v.vcpu, KVM_RUN, 0) < 0) {
                if (errno == EINTR)
                    continue;
                die("KVM_RUN");
            }
            unsigned port = io_port(&v);
            if (port == ping)
                exits++;
            else if (port == done)
                break;
            else {
                fprintf(stderr, "kvm_guest: exit on unexpected port %#x\n", port);
                return 1;
            }
        }
        printf("loop %llu %llu\n", (unsigned long long)exits, (unsigned long long)(now_ns() - t0));
        destroy(&v, &im);
        return 0;
    }
    fprintf(stderr, "kvm_guest: unknown mode %s\n", argv[2]);
    return 2;
}
