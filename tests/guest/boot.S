/* A boot-sector guest for qemu-bridge's tests.
 *
 * SeaBIOS loads it at 0x7c00 and jumps to it in real mode. It copies a marker to guest-physical
 * 0x10000 (where nothing else writes) so that the marker's presence there proves the guest ran,
 * then increments a 32-bit counter at 0x10040 on every BIOS timer tick (18.2 Hz) so that tests
 * can watch memory change. Between ticks it halts, so that under TCG it does not burn a host
 * core (a spinning guest would on a 2-core machine starve QEMU's monitor and the tests).
 * It also writes the marker to the serial port (COM1) once.
 *
 * Assembled with `--defsym WRITER=1` (scripts/build-boot-guest.sh OUTPUT.img WRITER) it is the
 * writer guest of the change-tracking tests: on every eighth tick (about every 0.44 s) it also
 * stores the counter into five pages and nowhere else:
 *   0x30010, 0x31020   (two adjacent pages: one merged range)
 *   0x58030
 *   0x100010, 0x10a010 (above 1 MiB, through segment 0xffff with A20 on: pages the BIOS left as
 *                       holes of the RAM file)
 * so that a tracker must report exactly those pages, the counter's and what the BIOS writes.
 *
 * Assembled with `--defsym SWEEPER=1` it is the sweeping guest of the capture tests: the timer
 * set to tick at about 1 kHz, on every tick it stores a counter, incremented at every store,
 * into the first dword of each page of 16 MiB-80 MiB in ascending order (through 32-bit
 * addresses in real mode, with A20 on). An image of one instant shows the stored values rising
 * by one from page to page with at most one break (where the sweep under way was when the image
 * was taken); an image copied while the guest ran shows a break wherever the copy and a sweep
 * crossed. Each sweep takes well under a tick under TCG, so the guest still halts most of the time.
 *
 * Build: as --32 [--defsym WRITER=1 | SWEEPER=1] boot.S -o boot.o && ld -m elf_i386 -Ttext 0x7c00 --oformat binary boot.o -o boot.bin
 *        truncate -s 1M boot.bin     (SeaBIOS refuses a 512-byte disk)
 */
    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
.ifdef WRITER
    in $0x92, %al           /* fast A20 on: 0xffff:0x10 is 0x100000, not 0x0 */
    or $2, %al
    and $0xfe, %al
    out %al, $0x92
.endif
.ifdef SWEEPER
    in $0x92, %al           /* fast A20 on: addresses above 1 MiB reach RAM */
    or $2, %al
    and $0xfe, %al
    out %al, $0x92
    mov $0x34, %al          /* PIT channel 0, rate generator, divisor 1193: about 1 kHz */
    out %al, $0x43
    mov $0xa9, %al
    out %al, $0x40
    mov $0x04, %al
    out %al, $0x40
    mov $1, %ebx            /* the value of the next store */
.endif
    mov $0x1000, %ax
    mov %ax, %es            /* es:0 = guest-physical 0x10000 */
    cld
    mov $marker, %si
    xor %di, %di
    mov $marker_end - marker, %cx
    rep movsb
    movl $0, %es:0x40

    mov $marker, %si        /* the marker on COM1 */
    mov $0x3f8, %dx
serial:
    lodsb
    test %al, %al
    jz count
    out %al, %dx
    jmp serial

count:
    sti                     /* the BIOS timer interrupt wakes us from hlt */
    hlt
    incl %es:0x40
.ifdef SWEEPER
    mov $0x1000000, %edi    /* 16 MiB */
sweep:
    addr32 movl %ebx, (%edi)   /* ds = 0; QEMU's real mode takes the 32-bit address whole */
    inc %ebx
    add $0x1000, %edi
    cmp $0x5000000, %edi    /* 80 MiB */
    jb sweep
.endif
.ifdef WRITER
    movl %es:0x40, %eax
    test $7, %al
    jnz count
    mov $0x3000, %bx
    mov %bx, %fs
    movl %eax, %fs:0x10     /* 0x30010 */
    movl %eax, %fs:0x1020   /* 0x31020 */
    mov $0x5800, %bx
    mov %bx, %fs
    movl %eax, %fs:0x30     /* 0x58030 */
    mov $0xffff, %bx
    mov %bx, %fs
    movl %eax, %fs:0x20     /* 0x100010 */
    movl %eax, %fs:0xa020   /* 0x10a010 */
.endif
    jmp count

marker:
    .ascii "QEMU-BRIDGE-TEST-MARKER:7c1e5a"
    .byte 0
marker_end:

    .org 510
    .word 0xaa55
