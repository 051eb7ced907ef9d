"""timing.py — what the PyTorch twins of the benchmarks (ops_torch.py,
model_torch.py) share: the median time of a function and the
`name<TAB>seconds` line that bench/compare.lua reads."""
import time


def median_time(fn, repeats):
    """One warm-up call, then the median of `repeats` timed calls, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def report(name, seconds):
    print(f"{name}\t{seconds:.6f}", flush=True)
