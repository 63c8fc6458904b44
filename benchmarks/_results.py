"""The benchmarks' one way to record a result: written atomically, then printed as one JSON line."""

import json
import os


def write_result(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result))
