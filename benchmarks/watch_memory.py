"""Peak RSS of `watch`'s live metrics, and whether they loaded torch.

Usage: python benchmarks/watch_memory.py STORE   (e.g. the 60-epoch store bench_scale.py builds)
"""

import resource
import sys

from fragility.watch import Watcher

snap = Watcher(sys.argv[1]).snapshot()
print(f"metrics: {snap.metrics is not None}, torch {'loaded' if 'torch' in sys.modules else 'not loaded'}, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
