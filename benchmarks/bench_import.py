"""How long `import raycf` and `raycf.load` take before a notebook can call `recommend`, and what they load.

    python benchmarks/bench_import.py            # 5 fresh interpreters, median and range
    python benchmarks/bench_import.py --runs 9

Each run is a new Python process (nothing cached in memory but the OS's file cache; the first run warms it and is
left out): the seconds to `import raycf`, then to reach `raycf.load` (the Python API: torch, numpy, pandas, scipy
and the models), and whether Ray was imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, sys, time
started = time.perf_counter()
import raycf
imported = time.perf_counter()
raycf.load
reached = time.perf_counter()
print(json.dumps({"import": imported - started, "load": reached - started,
                  "ray": any(name == "ray" or name.startswith("ray.") for name in sys.modules)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    samples = [json.loads(subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                                         text=True).stdout) for _ in range(runs + 1)][1:]
    for key, what in (("import", "import raycf"), ("load", "import raycf; raycf.load")):
        values = [sample[key] for sample in samples]
        print(f"{what:28s} median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f} s, "
              f"{runs} runs)")
    print(f"Ray imported: {'yes' if any(sample['ray'] for sample in samples) else 'no'}")


if __name__ == "__main__":
    main()
