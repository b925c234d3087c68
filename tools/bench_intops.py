"""Median milliseconds of QuartzNet-size integer convolutions (int_conv1d) beside float F.conv1d,
B=1, T=500, with 1 and 2 torch threads: the table quoted in intops/conv.py's doc. A report, not a
test: timings on a shared 2-core machine swing by 10-100x with 2 threads when other jobs run.

    python tools/bench_intops.py [--repeats 5]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from intasr.intops import int_conv1d


def median_ms(fn, n: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * sorted(ts)[len(ts) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(5)

    def rand(lo, hi, shape, dtype):
        return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)

    x, xu = rand(-128, 127, (1, 512, 500), torch.int8), rand(0, 255, (1, 512, 500), torch.int16)
    wp, wd = rand(-128, 127, (512, 512, 1), torch.int8), rand(-128, 127, (512, 1, 63), torch.int8)
    xf, wpf, wdf = x.float(), wp.float(), wd.float()
    cases = {
        "pointwise float": lambda: F.conv1d(xf, wpf),
        "pointwise int (int8 x)": lambda: int_conv1d(x, wp),
        "pointwise int (uint8 x)": lambda: int_conv1d(xu, wp),
        "depthwise k63 float": lambda: F.conv1d(xf, wdf, padding=31, groups=512),
        "depthwise k63 int32": lambda: int_conv1d(x, wd, padding=31, groups=512),
    }
    old, rows = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, fn in cases.items():
                rows[(name, threads)] = median_ms(fn, args.repeats)
    finally:
        torch.set_num_threads(old)
    print("layer (B=1, T=500)            1 thread   2 threads")
    for name in cases:
        print(f"{name:28s} {rows[(name, 1)]:7.2f} ms {rows[(name, 2)]:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
