"""Peak RSS of `watch`'s live metrics and whether torch was loaded: python benchmarks/watch_memory.py STORE."""
import resource, sys, time
from fragility.watch import Watcher
w = Watcher(sys.argv[1])
snap = w.snapshot()
print("metrics:", snap.metrics is not None, "torch" in sys.modules, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "MB")
