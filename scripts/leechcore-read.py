#!/usr/bin/env python3
"""Reads guest RAM with LeechCore's QEMU device (the peer in the benchmark): SHM QMP LEN.

SHM is the RAM file's name under /dev/shm, QMP a QMP socket LeechCore may use alone (it asks it
for the memory map), LEN the bytes to read in 1 MiB reads. Prints the median GB/s of 10 rounds.
"""
import statistics
import sys
import time

import leechcorepyc

shm, qmp, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
lc = leechcorepyc.LeechCore(f"qemu://shm={shm},qmp={qmp}")
try:
    rates = []
    for _ in range(10):
        start = time.perf_counter()
        done = 0
        while done < length:
            done += len(lc.read(done, 1 << 20))
        rates.append(length / (time.perf_counter() - start) / 1e9)
    print(f"{statistics.median(rates):.3f}")
finally:
    lc.close()
