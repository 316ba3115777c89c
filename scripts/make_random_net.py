"""Write a seeded random lc0 network: ``python scripts/make_random_net.py OUT.pb.gz [key=value ...]``.

Keys are the fields of :class:`leela_interp.network.lc0.random_net.RandomNetSpec` plus ``seed``,
e.g.::

    python scripts/make_random_net.py t82_random.pb.gz body=transformer policy=attention \
        d_model=768 layers=15 heads=24 d_ff=1024 embedding=PE_MAP smolgen_gen=256 \
        smolgen_compress=32 smolgen_hidden=256 default_activation=mish seed=0
"""

from __future__ import annotations

import dataclasses
import sys

from leela_interp.network.lc0.random_net import RandomNetSpec, write_random_net


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("fields:", ", ".join(f.name for f in dataclasses.fields(RandomNetSpec)))
        return
    types = {f.name: f.type for f in dataclasses.fields(RandomNetSpec)}
    overrides: dict[str, object] = {}
    seed = 0
    for item in argv[1:]:
        key, _, value = item.partition("=")
        if key == "seed":
            seed = int(value)
        elif key not in types:
            sys.exit(f"unknown field {key!r}; fields: {', '.join(types)}")
        elif types[key] in ("int", int):
            overrides[key] = int(value)
        elif types[key] in ("bool", bool):
            overrides[key] = value.lower() in ("1", "true", "yes")
        else:
            overrides[key] = value
    path = write_random_net(argv[0], seed=seed, **overrides)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
