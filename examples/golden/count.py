"""Golden-trace example: read a file, count words, print a JSON summary.

Run by count.sh with /usr/bin/python3 -I -S -B, so that neither the caller's environment,
site-packages (.pth files differ between machines) nor bytecode writes change what the
interpreter does.
"""

import json
import pathlib

words = pathlib.Path(__file__).with_name("data").joinpath("b.txt").read_text().split()
print(json.dumps({"words": len(words), "longest": max(words, key=len)}, sort_keys=True))
